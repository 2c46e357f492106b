//! `rouse queue-proxy`, the sidecar, as a real process in front of the real test app, on
//! ephemeral loopback ports: Knative's env contract, its probe protocol, the protobuf `Stat`
//! the autoscaler scrapes, bad environment, and the drain on SIGTERM.

mod common;
/// The stateful loopback API server rouse-kube's tests use, standing in for a cluster.
#[path = "../../rouse-kube/tests/common/fake.rs"]
mod fake;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::sidecar::{Sidecar, sidecar_env, start_app};
use common::{PATIENCE, eventually, rouse_bin};

/// A free loopback port for the test app (which takes a fixed `PORT`).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The sidecar's own lean binary (the same code as `rouse queue-proxy`).
fn sidecar_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_rouse-queue-proxy"))
}

/// The two ways to start the sidecar: `rouse queue-proxy` and `rouse-queue-proxy`.
fn sidecar_commands() -> [Command; 2] {
    let mut full = Command::new(rouse_bin());
    full.arg("queue-proxy");
    [full, Command::new(sidecar_bin())]
}

/// One request (`Connection: close`); the status, head (lowercase) and raw body.
fn exchange(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    exchange_as(addr, "hello.default.example.com", path, headers)
}

/// [`exchange`] for `host`.
fn exchange_as(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..end]).unwrap().trim(), 16).unwrap();
        b = &b[end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// The fields of Knative's protobuf `Stat`, decoded by hand from the wire format.
#[derive(Debug, Default)]
struct Stat {
    pod_name: String,
    average_concurrent_requests: f64,
    request_count: f64,
    process_uptime: f64,
}

fn decode_stat(mut b: &[u8]) -> Stat {
    fn varint(b: &mut &[u8]) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = b[0];
            *b = &b[1..];
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                break;
            }
        }
        v
    }
    let mut stat = Stat::default();
    while !b.is_empty() {
        let key = varint(&mut b);
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            1 => {
                let v = f64::from_le_bytes(b[..8].try_into().unwrap());
                b = &b[8..];
                match field {
                    2 => stat.average_concurrent_requests = v,
                    4 => stat.request_count = v,
                    6 => stat.process_uptime = v,
                    3 | 5 => {}
                    f => panic!("unexpected double field {f}"),
                }
            }
            2 => {
                let len = varint(&mut b) as usize;
                assert_eq!(field, 1, "only pod_name is length-delimited");
                stat.pod_name = String::from_utf8(b[..len].to_vec()).unwrap();
                b = &b[len..];
            }
            0 => {
                assert_eq!(field, 7, "only timestamp is a varint");
                varint(&mut b);
            }
            w => panic!("unexpected wire type {w}"),
        }
    }
    stat
}

fn wait_ready(sidecar: &Sidecar) {
    eventually("the sidecar's probe answers queue", PATIENCE, || {
        let (status, _, body) = exchange(
            sidecar.addr("serving"),
            "/",
            &[
                ("K-Network-Probe", "queue"),
                ("User-Agent", "Knative-Activator-Probe"),
            ],
        );
        (status == 200 && body == b"queue").then_some(())
    });
}

#[test]
fn sidecar_serves_the_app_answers_probes_and_reports_knatives_stat() {
    let app_port = free_port();
    let _app = start_app(app_port);
    let sidecar = Sidecar::start(&sidecar_env(app_port));
    wait_ready(&sidecar);

    // Requests reach the app, on the serving port and on the h2c port alike.
    for name in ["serving", "h2c"] {
        let (status, _, body) = exchange(sidecar.addr(name), "/headers", &[]);
        assert_eq!(status, 200, "{name}");
        let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(seen["host"], "hello.default.example.com");
    }
    // The kubelet's probe without the header is refused by the queue-proxy itself.
    let (status, _, _) = exchange(
        sidecar.addr("serving"),
        "/",
        &[("User-Agent", "kube-probe/1.33")],
    );
    assert_eq!(status, 400);
    let (status, _, body) = exchange(sidecar.addr("admin"), "/healthz", &[]);
    assert_eq!((status, body.as_slice()), (200, b"ok\n".as_slice()));

    // The autoscaler's scrape: protobuf `Stat`, cut every second. Keep sending until a report
    // with requests in it comes back.
    let stat = eventually("a Stat with requests", PATIENCE, || {
        let (status, _, _) = exchange(sidecar.addr("serving"), "/", &[]);
        assert_eq!(status, 200);
        let (status, head, body) = exchange(
            sidecar.addr("metrics"),
            "/metrics",
            &[("Accept", "application/protobuf")],
        );
        assert_eq!(status, 200);
        assert!(
            head.contains("content-type: application/protobuf"),
            "{head}"
        );
        let stat = decode_stat(&body);
        (stat.request_count >= 1.0).then_some(stat)
    });
    assert_eq!(stat.pod_name, "hello-00001-deployment-x1");
    assert!(stat.process_uptime > 0.0, "{stat:?}");
    assert!(stat.average_concurrent_requests >= 0.0, "{stat:?}");

    // Rouse's own view: JSON on the same path, Prometheus text on the request metrics port.
    let (status, _, body) = exchange(sidecar.addr("metrics"), "/metrics", &[]);
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["revision"], "hello-00001");
    let (status, _, body) = exchange(sidecar.addr("user-metrics"), "/metrics", &[]);
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    let total: f64 = text
        .lines()
        .find(|l| l.starts_with("rouse_queue_requests_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("rouse_queue_requests_total");
    assert!(total >= 3.0, "{text}");
}

#[test]
fn bad_environment_exits_with_one_line_naming_the_variable() {
    let cases: [(&str, Option<&str>); 3] = [
        ("USER_PORT", Some("http")),
        ("SERVING_REVISION", None),
        ("SERVING_READINESS_PROBE", Some("{not json")),
    ];
    for (var, value) in cases {
        let mut env = sidecar_env(8080);
        env.retain(|(k, _)| *k != var);
        if let Some(v) = value {
            env.push((var, v.to_string()));
        }
        for mut cmd in sidecar_commands() {
            let out = cmd
                .env_clear()
                .envs(env.iter().map(|(k, v)| (*k, v)))
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(1), "{var}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(stderr.lines().count(), 1, "{var}: {stderr:?}");
            assert!(stderr.starts_with(&format!("error: {var}: ")), "{stderr:?}");
            assert!(out.stdout.is_empty(), "nothing was bound for {var}");
        }
    }
}

#[test]
fn sigterm_drains_while_an_in_flight_request_finishes() {
    let app_port = free_port();
    let _app = start_app(app_port);
    let mut env = sidecar_env(app_port);
    env.push(("ROUSE_QUEUE_DRAIN_QUIET_SECONDS", "1".into()));
    let mut sidecar = Sidecar::start(&env);
    wait_ready(&sidecar);

    let serving = sidecar.addr("serving");
    let slow = std::thread::spawn(move || exchange(serving, "/?sleep=2500", &[]));
    let metrics = sidecar.addr("user-metrics");
    eventually("the slow request in flight", PATIENCE, || {
        let (_, _, body) = exchange(metrics, "/metrics", &[]);
        String::from_utf8(body)
            .unwrap()
            .lines()
            .any(|l| l.starts_with("rouse_queue_requests_in_flight{") && l.ends_with(" 1"))
            .then_some(())
    });
    // The app's preStop hook waits on the admin port until the drain is over.
    let admin = sidecar.addr("admin");
    let pre_stop = std::thread::spawn(move || exchange(admin, "/wait-for-drain", &[]));

    let term = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &sidecar.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // Health checks fail at once, while requests are still served during the quiet period.
    eventually("probes answer shutting down", PATIENCE, || {
        let (status, _, body) = exchange(serving, "/", &[("K-Network-Probe", "queue")]);
        (status == 503 && body == b"shutting down\n").then_some(())
    });

    let (status, _, body) = slow.join().unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, _, body) = pre_stop.join().unwrap();
    assert_eq!((status, body.as_slice()), (200, b"drained\n".as_slice()));
    let exit = eventually("the sidecar exits", PATIENCE, || {
        sidecar.child.try_wait().unwrap()
    });
    assert!(exit.success(), "{exit:?}");
    // At least the quiet period passed between SIGTERM and the exit.
    assert!(term.elapsed() >= Duration::from_secs(1));
}

/// A `rouse activator` or `rouse gateway` process and the address it printed.
struct Hop {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    /// The activator's second (h2c) port.
    h2c: Option<SocketAddr>,
    /// The gateway's HTTPS port.
    tls: Option<SocketAddr>,
    /// The gateway's cluster-local port.
    local: Option<SocketAddr>,
}

impl Hop {
    /// Fed by the endpoints file.
    fn start(role: &str, endpoints: &std::path::Path) -> Hop {
        Hop::start_from(role, "--endpoints", endpoints, &[])
    }

    /// Fed by `source` (`--endpoints` or `--kubeconfig`) naming `path`, with `extra` flags.
    fn start_from(role: &str, source: &str, path: &std::path::Path, extra: &[&str]) -> Hop {
        let mut child = Command::new(rouse_bin())
            .args([role, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--metrics", "127.0.0.1:0", "--poll", "20ms", source])
            .arg(path)
            .args(if role == "activator" {
                &["--listen-h2c", "127.0.0.1:0"][..]
            } else {
                &[
                    "--listen-tls",
                    "127.0.0.1:0",
                    "--listen-local",
                    "127.0.0.1:0",
                ][..]
            })
            .args(extra)
            .env_remove("POD_IP")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the hop starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addrs: HashMap<&str, SocketAddr> = line
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
            .collect();
        let (Some(addr), Some(admin)) = (addrs.get("listening"), addrs.get("admin")) else {
            panic!("{role} printed {line:?}");
        };
        Hop {
            child,
            addr: *addr,
            admin: *admin,
            h2c: addrs.get("h2c").copied(),
            tls: addrs.get("tls").copied(),
            local: addrs.get("local").copied(),
        }
    }
}

impl Drop for Hop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the endpoints file whole (a rename, so a reader never sees half of it).
fn write_endpoints(
    path: &std::path::Path,
    activators: &[SocketAddr],
    mode: &str,
    pods: &[SocketAddr],
) {
    write_endpoints_of(path, activators, mode, pods, false);
}

/// [`write_endpoints`] for a revision whose app speaks h2c or not.
fn write_endpoints_of(
    path: &std::path::Path,
    activators: &[SocketAddr],
    mode: &str,
    pods: &[SocketAddr],
    h2c: bool,
) {
    let doc = serde_json::json!({
        "activators": activators.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "revisions": [{
            "namespace": "default",
            "name": "hello-00001",
            "mode": mode,
            "pods": pods.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "timeoutSeconds": 120,
            "h2c": h2c,
        }],
        "routes": [{
            "host": "hello.default.example.com",
            "targets": [{"namespace": "default", "revision": "hello-00001", "percent": 100}],
        }],
    });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, doc.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The file for the HTTPS test: the live revision with its pod, and a Knative Ingress for
/// `secure.example.com` with `spec.tls` naming the Secret holding `leaf`, redirected to HTTPS,
/// routing by path and header: `/headers` to the live revision, `/headers` with `X-Canary:
/// yes` to `canary` and every other path to `idle` (both without pods, so answered 503
/// naming them); the path and its split append headers.
fn write_tls_endpoints(path: &std::path::Path, pod: SocketAddr, leaf: &common::tls::Leaf) {
    let split = |rev: &str| serde_json::json!([{"serviceNamespace": "shop", "serviceName": rev, "servicePort": 80, "percent": 100}]);
    let doc = serde_json::json!({
        "revisions": [{"namespace": "shop", "name": "live", "mode": "serve", "pods": [pod.to_string()]}],
        "ingresses": [{
            "apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "Ingress",
            "metadata": {"name": "secure", "namespace": "shop"},
            "spec": {
                "httpOption": "Redirected",
                "tls": [{"hosts": ["secure.example.com"], "secretName": "secure-cert", "secretNamespace": "shop"}],
                "rules": [{"hosts": ["secure.example.com"], "visibility": "ExternalIP", "http": {"paths": [
                    {"path": "/headers", "appendHeaders": {"X-Rule": "live"}, "splits": [
                        {"serviceNamespace": "shop", "serviceName": "live", "servicePort": 80, "percent": 100,
                         "appendHeaders": {"X-Split": "live", "Knative-Serving-Revision": "live"}},
                    ]},
                    {"path": "/headers", "headers": {"X-Canary": {"exact": "yes"}}, "splits": split("canary")},
                    {"splits": split("idle")},
                ]}}],
            },
        }],
        "secrets": [common::tls::tls_secret("shop", "secure-cert", leaf)],
    });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, doc.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `rouse gateway` serving a Knative Ingress's `spec.tls` from the file: HTTPS with the
/// certificate the Secret holds, chosen by SNI (none for another name: the handshake is
/// refused), HTTP/1.1 and h2 by ALPN, the app told `https` whatever the client claims, the
/// certificate swapped when the Secret changes; plain HTTP redirected; paths and header
/// matches routed as the Ingress says.
#[test]
fn the_gateway_terminates_tls_by_sni_redirects_plain_http_and_routes_paths_and_headers() {
    use common::tls::{TestCa, der, get};
    let app_port = free_port();
    let _app = start_app(app_port);
    let sidecar = Sidecar::start(&sidecar_env(app_port));
    wait_ready(&sidecar);
    let pod = sidecar.addr("serving");
    let ca = TestCa::new();
    let first = ca.leaf(&["secure.example.com"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.json");
    write_tls_endpoints(&file, pod, &first);
    let gateway = Hop::start("gateway", &file);
    let https = gateway.tls.expect("the gateway printed its HTTPS port");
    let h1 = ca.client(&[b"http/1.1"]);
    let h2 = ca.client(&[b"h2", b"http/1.1"]);

    // Plain HTTP is redirected, path and query kept, the port dropped.
    let (status, head, _) =
        exchange_as(gateway.addr, "Secure.example.com:8080", "/headers?a=1", &[]);
    assert_eq!(status, 301, "{head}");
    assert!(
        head.lines()
            .any(|l| l.trim_end() == "location: https://secure.example.com/headers?a=1"),
        "{head}"
    );

    // HTTPS over HTTP/1.1: the app is told https, not what the client claims.
    let answer = get(
        h1.clone(),
        https,
        "secure.example.com",
        "/headers",
        &[("X-Forwarded-Proto", "http")],
    )
    .expect("the handshake succeeds");
    assert_eq!(answer.alpn.as_deref(), Some("http/1.1"));
    assert_eq!(answer.peer_cert, der(&first.cert));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https", "{seen}");
    assert_eq!(seen["headers"]["x-rule"], "live", "{seen}");
    assert_eq!(seen["headers"]["x-split"], "live", "{seen}");
    assert!(
        seen["headers"]["forwarded"]
            .as_str()
            .unwrap()
            .ends_with("proto=https"),
        "{seen}"
    );

    // h2 by ALPN, the same routing.
    let answer = get(h2.clone(), https, "secure.example.com", "/headers", &[]).unwrap();
    assert_eq!(answer.alpn.as_deref(), Some("h2"));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(
        seen["version"], "HTTP/1.1",
        "the pod is reached over HTTP/1.1: {seen}"
    );
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https", "{seen}");

    // Header match first, then the path; any other path takes the catch-all.
    let canary = get(
        h1.clone(),
        https,
        "secure.example.com",
        "/headers",
        &[("X-Canary", "yes")],
    )
    .unwrap();
    assert_eq!(canary.status, 503);
    assert!(canary.body.contains("shop/canary"), "{}", canary.body);
    let other = get(h1.clone(), https, "secure.example.com", "/other", &[]).unwrap();
    assert_eq!(other.status, 503);
    assert!(other.body.contains("shop/idle"), "{}", other.body);

    // The gateway counts the names it has a certificate for.
    let (status, _, body) = exchange(gateway.admin, "/metrics", &[]);
    assert_eq!(status, 200);
    let metrics = String::from_utf8(body).unwrap();
    assert!(
        metrics.lines().any(|l| l == "rouse_gateway_tls_hosts 1"),
        "{metrics}"
    );

    // A name without a certificate: refused, no other host's certificate shown.
    let refused = get(h1.clone(), https, "other.example.com", "/headers", &[]);
    assert!(
        refused.is_err(),
        "a handshake for an unknown name must fail"
    );

    // The Secret changes: new handshakes (not resumed sessions) get the new certificate.
    let second = ca.leaf(&["secure.example.com"]);
    write_tls_endpoints(&file, pod, &second);
    eventually("the new certificate is served", PATIENCE, || {
        // A new client each time: a resumed session would not show the certificate anew.
        let fresh = ca.client(&[b"http/1.1"]);
        let answer = get(fresh, https, "secure.example.com", "/headers", &[]).ok()?;
        (answer.peer_cert == der(&second.cert)).then_some(answer.status)
    });
}

/// `rouse gateway` keeps cluster-local hosts off its external listeners: a Route's
/// `ClusterLocal` rule hosts are unknown (404) on `--listen` and served on `--listen-local`,
/// whose callers may reach the public host too; a host-only route (the fast path) and one
/// routed by path (the general path) alike. HTTPS is external too: a certificate for a
/// cluster-local name does not make it served there.
#[test]
fn cluster_local_hosts_are_served_on_the_local_listener_only() {
    use common::tls::{TestCa, get};
    let ca = TestCa::new();
    let leaf = ca.leaf(&["hello.shop.svc.cluster.local", "hello.shop.example.com"]);
    let app_port = free_port();
    let _app = start_app(app_port);
    let sidecar = Sidecar::start(&sidecar_env(app_port));
    wait_ready(&sidecar);
    let pod = sidecar.addr("serving");
    let split = serde_json::json!([{"serviceNamespace": "shop", "serviceName": "live", "servicePort": 80, "percent": 100}]);
    let ingress = |name: &str, rules: serde_json::Value| {
        serde_json::json!({
            "apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"rules": rules, "tls": [{
                "hosts": ["hello.shop.svc.cluster.local", "hello.shop.example.com"],
                "secretName": "hello-cert",
            }]},
        })
    };
    let doc = serde_json::json!({
        "revisions": [{"namespace": "shop", "name": "live", "mode": "serve", "pods": [pod.to_string()]}],
        "ingresses": [
            ingress("hello", serde_json::json!([
                {"hosts": ["hello.shop", "hello.shop.svc", "hello.shop.svc.cluster.local"],
                 "visibility": "ClusterLocal", "http": {"paths": [{"splits": split}]}},
                {"hosts": ["hello.shop.example.com"], "visibility": "ExternalIP",
                 "http": {"paths": [{"splits": split}]}},
            ])),
            // A cluster-local Route routed by path: the general path.
            ingress("private", serde_json::json!([
                {"hosts": ["private.shop.svc.cluster.local"], "visibility": "ClusterLocal",
                 "http": {"paths": [{"path": "/headers", "splits": split}]}},
            ])),
        ],
        "secrets": [common::tls::tls_secret("shop", "hello-cert", &leaf)],
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let gateway = Hop::start("gateway", &file);
    let local = gateway
        .local
        .expect("the gateway printed its cluster-local port");
    let status = |addr: SocketAddr, host: &str, path: &str| {
        let (status, _, body) = exchange_as(addr, host, path, &[]);
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    eventually("the routes known", PATIENCE, || {
        (status(local, "hello.shop.svc.cluster.local", "/").0 == 200).then_some(())
    });
    for (host, path) in [
        ("hello.shop", "/"),
        ("hello.shop.svc", "/"),
        ("hello.shop.svc.cluster.local", "/"),
        ("Hello.Shop.svc.cluster.local:80", "/"),
        ("private.shop.svc.cluster.local", "/headers"),
    ] {
        let (code, body) = status(gateway.addr, host, path);
        assert_eq!(code, 404, "{host} through the external listener: {body}");
        assert!(body.contains("no route for host"), "{body}");
        let (code, body) = status(local, host, path);
        assert_eq!(code, 200, "{host} through the local listener: {body}");
    }
    // The public host: through both.
    for addr in [gateway.addr, local] {
        let (code, body) = status(addr, "hello.shop.example.com", "/");
        assert_eq!(code, 200, "{body}");
    }
    // An unknown host is unknown on both.
    for addr in [gateway.addr, local] {
        assert_eq!(status(addr, "nobody.shop.svc.cluster.local", "/").0, 404);
    }
    // Over HTTPS the public host is served, the cluster-local one is not.
    let https = gateway.tls.expect("the gateway printed its HTTPS port");
    for (host, want) in [
        ("hello.shop.example.com", 200),
        ("hello.shop.svc.cluster.local", 404),
    ] {
        let answer = get(ca.client(&[b"http/1.1"]), https, host, "/", &[]).unwrap();
        assert_eq!(answer.status, want, "{host} over HTTPS: {}", answer.body);
    }
}

/// An HTTP/2 (prior knowledge) connection to `addr`, driven on the current runtime.
async fn h2_connect(
    addr: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("an HTTP/2 prior-knowledge connection");
    tokio::spawn(conn);
    send
}

/// One HTTP/2 (prior knowledge) GET of `path` on `hello.default.example.com` through `addr`:
/// the status and the JSON body.
fn h2_get_json(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    use http_body_util::BodyExt;

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut send = h2_connect(addr).await;
        let req = http::Request::get(format!("http://hello.default.example.com{path}"))
            .body(http_body_util::Full::default())
            .unwrap();
        let resp = tokio::time::timeout(PATIENCE, send.send_request(req))
            .await
            .expect("answered within the bound")
            .expect("answered");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())
        });
        (status, json)
    })
}

/// The sidecar's last load report, as JSON (Rouse's own format on the stats port).
fn sidecar_report(sidecar: &Sidecar) -> serde_json::Value {
    let (status, _, body) = exchange(sidecar.addr("metrics"), "/metrics", &[]);
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

/// The issue's loopback proof: queue-proxy, activator and gateway as separate processes, a
/// static endpoints file in place of the Kubernetes API. A request at zero waits in the
/// activator, the revision wakes (its pod starts and the file names it), the request is
/// served; then the file flips the revision to Serve mode and the activator leaves the path,
/// with no request lost throughout.
#[test]
fn separate_processes_buffer_at_zero_wake_and_leave_the_activator_without_losing_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.json");
    write_endpoints(&file, &[], "proxy", &[]);
    let activator = Hop::start("activator", &file);
    write_endpoints(&file, &[activator.addr], "proxy", &[]);
    let gateway = Hop::start("gateway", &file);

    // At zero: the request goes gateway → activator and waits there.
    let gw = gateway.addr;
    let cold = std::thread::spawn(move || exchange(gw, "/", &[]));
    // The activator answers its own probe while the request waits, on both its ports.
    for port in [activator.addr, activator.h2c.expect("the h2c port printed")] {
        let (status, _, body) = exchange(port, "/", &[("K-Network-Probe", "activator")]);
        assert_eq!((status, body.as_slice()), (200, b"activator".as_slice()));
    }
    // It waits in the activator's queue (the activator's metrics on its admin port).
    eventually("the request queued in the activator", PATIENCE, || {
        let (status, _, body) = exchange(activator.admin, "/metrics", &[]);
        assert_eq!(status, 200);
        String::from_utf8(body)
            .unwrap()
            .lines()
            .any(|l| l.starts_with("rouse_activator_requests_queued{") && l.ends_with(" 1"))
            .then_some(())
    });
    assert!(!cold.is_finished(), "nothing can serve the request yet");
    let (status, _, _) = exchange(gateway.admin, "/readyz", &[]);
    assert_eq!(status, 200);

    // The revision wakes: its pod (app + sidecar) starts and the file names it.
    let app_port = free_port();
    let _app = start_app(app_port);
    let sidecar = Sidecar::start(&sidecar_env(app_port));
    let pod = sidecar.addr("serving");
    write_endpoints(&file, &[activator.addr], "proxy", &[pod]);
    let (status, head, body) = cold.join().unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        head.contains("k-cold-start:"),
        "waited in the activator: {head}"
    );
    // An HTTP/2 client's GET goes the same way, each hop sending it on as HTTP/1.1 with the
    // Host its authority named.
    let (status, seen) = h2_get_json(gw, "/headers");
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["host"], "hello.default.example.com", "{seen}");
    assert_eq!(seen["version"], "HTTP/1.1", "{seen}");
    let forwarded = seen["headers"]["forwarded"].as_str().unwrap_or_default();
    assert!(
        forwarded.contains("host=hello.default.example.com"),
        "{seen}"
    );

    // A bounded stream of requests through the gateway while the revision goes to Serve mode.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            let started = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::SeqCst)
                && statuses.len() < 5_000
                && started.elapsed() < PATIENCE
            {
                let (status, _, _) = exchange(gw, "/", &[]);
                statuses.push(status);
            }
            statuses
        })
    };
    // Through the activator first: the sidecar counts proxied requests.
    eventually("requests proxied by the activator", PATIENCE, || {
        (sidecar_report(&sidecar)["proxiedRequestCount"].as_f64() > Some(0.0)).then_some(())
    });
    write_endpoints(&file, &[activator.addr], "serve", &[pod]);
    // The activator has left the path: a whole report period with requests, none proxied.
    eventually("a period served without the activator", PATIENCE, || {
        let r = sidecar_report(&sidecar);
        (r["requestCount"].as_f64() > Some(0.0) && r["proxiedRequestCount"].as_f64() == Some(0.0))
            .then_some(())
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let statuses = load.join().unwrap();
    assert!(statuses.len() > 1, "the load ran");
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every request served: {:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
}

/// The activator's push over the network: `rouse activator` as a process, the autoscaler's
/// stream endpoint (the controller's code) in this test. A request at zero waiting in the
/// activator pokes the autoscaler and shows in the activator's per-second stats; the test,
/// playing the controller, then starts the pod and the request is served.
#[test]
fn a_request_at_zero_through_the_activator_process_pokes_the_autoscaler() {
    use rouse_kube::stat_stream::{self, ActivatorStats, StreamEnd, StreamToken};
    use std::sync::Arc;

    let rt = tokio::runtime::Runtime::new().unwrap();
    let stats = Arc::new(ActivatorStats::default());
    let mut pokes = stats.begin_term();
    let (_leading, leading_rx) = tokio::sync::watch::channel(true);
    let end = Arc::new(StreamEnd {
        stats: stats.clone(),
        token: Arc::new(StreamToken::new("loopback-token")),
        leading: leading_rx,
    });
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let autoscaler = listener.local_addr().unwrap();
    rt.spawn(stat_stream::serve(listener, end, std::future::pending()));

    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "loopback-token\n").unwrap();
    let file = dir.path().join("endpoints.json");
    write_endpoints(&file, &[], "proxy", &[]);
    let url = format!("http://{autoscaler}");
    let activator = Hop::start_from(
        "activator",
        "--endpoints",
        &file,
        &[
            "--autoscaler",
            &url,
            "--autoscaler-token-file",
            token.to_str().unwrap(),
        ],
    );
    let act = activator.addr;
    let named = [
        ("Knative-Serving-Namespace", "default"),
        ("Knative-Serving-Revision", "hello-00001"),
    ];
    let sent = Instant::now();
    let cold = std::thread::spawn(move || exchange(act, "/", &named));
    let poke = rt
        .block_on(async { tokio::time::timeout(PATIENCE, pokes.recv()).await })
        .expect("a poke within the bound")
        .expect("the poke channel is open");
    println!(
        "request at zero -> poke at the autoscaler, across processes: {:?}",
        sent.elapsed()
    );
    assert_eq!(poke, ("default".to_string(), "hello-00001".to_string()));
    // The waiting request is load in the activator's per-second report.
    eventually(
        "the activator's stats show the waiting request",
        PATIENCE,
        || {
            stats
                .take()
                .iter()
                .any(|l| l.revision == "hello-00001" && l.average_concurrency > 0.0)
                .then_some(())
        },
    );
    assert!(!cold.is_finished(), "nothing can serve the request yet");

    // The controller's answer: a pod starts and the activator learns it.
    let app_port = free_port();
    let _app = start_app(app_port);
    let sidecar = Sidecar::start(&sidecar_env(app_port));
    write_endpoints(
        &file,
        &[activator.addr],
        "proxy",
        &[sidecar.addr("serving")],
    );
    let (status, _, body) = cold.join().unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

/// Opens a WebSocket to the test app's `/ws` echo through `addr`.
fn ws_connect(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: hello.default.example.com\r\nUpgrade: websocket\r\n\
          Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "handshake cut short");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// One masked client frame.
fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [7u8, 1, 9, 3];
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Sends a text frame and reads the echo.
fn ws_echo(s: &mut TcpStream, text: &str) -> String {
    s.write_all(&ws_frame(1, text.as_bytes())).unwrap();
    let mut hdr = [0u8; 2];
    s.read_exact(&mut hdr).unwrap();
    assert_eq!(hdr[0] & 0x0f, 1, "a text frame");
    let mut payload = vec![0u8; (hdr[1] & 0x7f) as usize];
    s.read_exact(&mut payload).unwrap();
    String::from_utf8(payload).unwrap()
}

#[test]
fn sigterm_keeps_an_open_websocket_until_it_closes() {
    let app_port = free_port();
    let _app = start_app(app_port);
    let mut env = sidecar_env(app_port);
    env.push(("ROUSE_QUEUE_DRAIN_QUIET_SECONDS", "1".into()));
    let mut sidecar = Sidecar::start(&env);
    wait_ready(&sidecar);
    let mut ws = ws_connect(sidecar.addr("serving"));
    assert_eq!(ws_echo(&mut ws, "before"), "before");

    let term = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &sidecar.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let serving = sidecar.addr("serving");
    eventually("probes answer shutting down", PATIENCE, || {
        let (status, _, _) = exchange(serving, "/", &[("K-Network-Probe", "queue")]);
        (status == 503).then_some(())
    });
    // Past the quiet period the socket still carries messages both ways, and the sidecar
    // stays up for it.
    let mut n = 0;
    while term.elapsed() < Duration::from_secs(3) {
        let text = format!("during-{n}");
        assert_eq!(ws_echo(&mut ws, &text), text);
        assert!(
            sidecar.child.try_wait().unwrap().is_none(),
            "exited with a socket open"
        );
        n += 1;
    }
    // The client closes it: the drain is over and the sidecar exits cleanly.
    ws.write_all(&ws_frame(8, &[0x03, 0xe8])).unwrap();
    drop(ws);
    let exit = eventually("the sidecar exits", PATIENCE, || {
        sidecar.child.try_wait().unwrap()
    });
    assert!(exit.success(), "{exit:?}");
}

const INGRESSES: &str = "apis/networking.internal.knative.dev/v1alpha1/ingresses";
const REVISIONS: &str = "apis/serving.knative.dev/v1/revisions";
const SLICES: &str = "apis/discovery.k8s.io/v1/endpointslices";
const SKS: &str = "apis/networking.internal.knative.dev/v1alpha1/serverlessservices";
const CONFIGMAPS: &str = "api/v1/configmaps";

/// Revision `hello-00001` as its Configuration writes it.
fn hello_revision() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Revision",
        "metadata": {"name": "hello-00001", "namespace": "default"},
        "spec": {"timeoutSeconds": 120, "containers": [{"image": "testapp"}]},
    })
}

/// Revision `name`'s ServerlessService in Proxy mode as the controller writes it, with
/// `status.privateServiceName` once given.
fn serverless_service(name: &str, private: Option<&str>) -> serde_json::Value {
    let mut sks = serde_json::json!({
        "apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "ServerlessService",
        "metadata": {"name": name, "namespace": "default",
            "ownerReferences": [{"apiVersion": "serving.knative.dev/v1", "kind": "Revision",
                                 "name": name, "uid": "rev-uid"}]},
        "spec": {"mode": "Proxy", "protocolType": "http1",
                 "objectRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                               "name": format!("{name}-deployment")}},
    });
    if let Some(p) = private {
        sks["status"] = serde_json::json!({"serviceName": name, "privateServiceName": p});
    }
    sks
}

/// `config-autoscaler` in knative-serving with `activator-queue-depth`.
fn config_autoscaler(depth: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "config-autoscaler", "namespace": "knative-serving"},
        "data": {"activator-queue-depth": depth},
    })
}

/// An EndpointSlice of Service `service` (in `default`) with one address per backend, each
/// in its own slice so that each can have its own loopback port (on a cluster every pod
/// listens on the same one).
fn slice(service: &str, service_type: &str, n: usize, backend: SocketAddr) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-{n}"), "namespace": "default",
            "labels": {"kubernetes.io/service-name": service,
                       "networking.internal.knative.dev/serviceType": service_type}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [backend.ip().to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": backend.port(), "protocol": "TCP"}],
    })
}

/// The runtime the loopback API server runs on.
fn api_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn kubeconfig(dir: &std::path::Path, api: SocketAddr) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{api}\n\
         users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
         current-context: fake\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The same proof fed by the Kubernetes API instead of a file: `rouse gateway --kubeconfig`
/// and `rouse activator --kubeconfig` against a loopback API server holding the objects the
/// controller writes (the Ingress, the Revision, the public EndpointSlice pointing at the
/// activator, then at the pod) and the private one Kubernetes writes. Neither is ready before
/// the API server answers; a request at zero waits in the activator until the pod appears,
/// the activator leaves the path when the public slice names the pod, no request is lost,
/// and the gateway marks the Ingress Ready.
#[test]
fn separate_processes_fed_by_the_kubernetes_api_route_wake_and_leave_the_activator() {
    let rt = api_runtime();
    let dir = tempfile::tempdir().unwrap();
    // The API server's address, before it is up.
    let api = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let kc = kubeconfig(dir.path(), api);
    let activator = Hop::start_from("activator", "--kubeconfig", &kc, &[]);
    let gateway = Hop::start_from("gateway", "--kubeconfig", &kc, &[]);
    // Unreachable API server: the processes run, not ready.
    for hop in [&activator, &gateway] {
        let (status, _, body) = exchange(hop.admin, "/readyz", &[]);
        assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
        let (status, _, _) = exchange(hop.admin, "/healthz", &[]);
        assert_eq!(status, 200);
    }

    let fake = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(api).await.unwrap();
        fake::Fake::start_on(listener)
    });
    fake.put(REVISIONS, hello_revision());
    fake.put(SKS, serverless_service("hello-00001", None));
    fake.put(
        INGRESSES,
        serde_json::json!({
            "apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "Ingress",
            "metadata": {"name": "hello", "namespace": "default",
                "annotations": {"networking.knative.dev/ingress.class": "rouse.ingress.networking.knative.dev"}},
            "spec": {"rules": [{"hosts": ["hello.default.example.com", "hello.default.svc.cluster.local"], "visibility": "ExternalIP",
                "http": {"paths": [{"splits": [{"serviceNamespace": "default", "serviceName": "hello-00001",
                    "servicePort": 80, "percent": 100,
                    "appendHeaders": {"Knative-Serving-Revision": "hello-00001",
                                      "Knative-Serving-Namespace": "default"}}]}]}}]},
        }),
    );
    for hop in [&activator, &gateway] {
        eventually("synced with the API server", PATIENCE, || {
            (exchange(hop.admin, "/readyz", &[]).0 == 200).then_some(())
        });
    }
    // No endpoints at all yet (no pod, no activator): refused at once, not held.
    eventually("the route known, without endpoints", PATIENCE, || {
        let (status, _, body) = exchange(gateway.addr, "/", &[]);
        let text = String::from_utf8_lossy(&body).into_owned();
        (status == 503 && text.contains("no endpoints")).then_some(())
    });
    // Proxy mode: the public Service's endpoints are the activator.
    fake.put(SLICES, slice("hello-00001", "Public", 0, activator.addr));
    let marked_ready = |name: &str| {
        let ing = fake.object(INGRESSES, "default", name)?;
        let ready = ing["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        (ready
            && ing["status"]["publicLoadBalancer"]["ingress"][0]["domainInternal"]
                == "rouse-gateway.knative-serving.svc.cluster.local"
            && ing["status"]["privateLoadBalancer"]["ingress"][0]["domainInternal"]
                == "rouse-gateway-local.knative-serving.svc.cluster.local")
            .then_some(())
    };
    eventually("the Ingress marked Ready by the gateway", PATIENCE, || {
        marked_ready("hello")
    });

    // At zero: gateway → activator, where the request waits (once the gateway has seen the
    // slice: until then it refuses at once, and the request is sent again).
    let gw = gateway.addr;
    let cold = std::thread::spawn(move || {
        eventually("the gateway sending to the activator", PATIENCE, || {
            let (status, head, body) = exchange(gw, "/", &[]);
            let refused = status == 503 && String::from_utf8_lossy(&body).contains("no endpoints");
            (!refused).then_some((status, head, body))
        })
    });
    eventually("the request queued in the activator", PATIENCE, || {
        let (_, _, body) = exchange(activator.admin, "/metrics", &[]);
        String::from_utf8(body)
            .unwrap()
            .lines()
            .any(|l| l.starts_with("rouse_activator_requests_queued{") && l.ends_with(" 1"))
            .then_some(())
    });
    assert!(!cold.is_finished(), "nothing can serve the request yet");

    // The pod starts; Kubernetes lists it in the private Service's slice.
    let app_port = free_port();
    let _app = start_app(app_port);
    let sidecar = Sidecar::start(&sidecar_env(app_port));
    let pod = sidecar.addr("serving");
    fake.put(SLICES, slice("hello-00001-private", "Private", 0, pod));
    let (status, head, body) = cold.join().unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        head.contains("k-cold-start:"),
        "waited in the activator: {head}"
    );

    // A bounded stream of requests while the public slice switches to the pod (Serve).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            let started = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::SeqCst)
                && statuses.len() < 5_000
                && started.elapsed() < PATIENCE
            {
                statuses.push(exchange(gw, "/", &[]).0);
            }
            statuses
        })
    };
    eventually("requests proxied by the activator", PATIENCE, || {
        (sidecar_report(&sidecar)["proxiedRequestCount"].as_f64() > Some(0.0)).then_some(())
    });
    fake.put(SLICES, slice("hello-00001", "Public", 0, pod));
    eventually("a period served without the activator", PATIENCE, || {
        let r = sidecar_report(&sidecar);
        (r["requestCount"].as_f64() > Some(0.0) && r["proxiedRequestCount"].as_f64() == Some(0.0))
            .then_some(())
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let statuses = load.join().unwrap();
    assert!(statuses.len() > 1, "the load ran");
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every request served: {:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );

    // A DomainMapping's Ingress (as the controller writes it): its domain is served as the
    // target's cluster-local host, which the Route's Ingress routes, with the domain in
    // `K-Original-Host`, from which the queue-proxy restores the Host the app sees (as
    // Knative's does).
    fake.put(
        INGRESSES,
        serde_json::json!({
            "apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "Ingress",
            "metadata": {"name": "app.example.org", "namespace": "default",
                "annotations": {"networking.knative.dev/ingress.class": "rouse.ingress.networking.knative.dev"}},
            "spec": {"rules": [{"hosts": ["app.example.org"], "visibility": "ExternalIP",
                "http": {"paths": [{"rewriteHost": "hello.default.svc.cluster.local",
                    "splits": [{"serviceNamespace": "default", "serviceName": "hello",
                        "servicePort": 80, "percent": 100,
                        "appendHeaders": {"K-Original-Host": "app.example.org"}}]}]}}]},
        }),
    );
    eventually("the mapping's Ingress marked Ready", PATIENCE, || {
        marked_ready("app.example.org")
    });
    let (status, _, body) = exchange_as(gw, "App.Example.org:8080", "/headers", &[]);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["host"], "app.example.org", "{seen}");
    assert!(seen["headers"]["k-original-host"].is_null(), "{seen}");
    let forwarded = seen["headers"]["forwarded"].as_str().unwrap_or("");
    assert!(
        forwarded.contains(r#"host="App.Example.org:8080""#),
        "{seen}"
    );
    assert_eq!(exchange_as(gw, "other.example.org", "/", &[]).0, 404);

    // An unknown host is still the gateway's 404, and a deleted Ingress takes its host away.
    fake.remove(INGRESSES, "default", "hello");
    eventually("the host gone with its Ingress", PATIENCE, || {
        (exchange(gw, "/", &[]).0 == 404).then_some(())
    });
    drop(rt);
}

/// Whether the activator's metrics list revision `name` (it knows the revision).
fn activator_knows(activator: &Hop, name: &str) -> bool {
    let (_, _, body) = exchange(activator.admin, "/metrics", &[]);
    String::from_utf8(body)
        .unwrap()
        .contains(&format!("revision=\"{name}\""))
}

/// Requests of `hello-00001` waiting in the activator now.
fn activator_queued(activator: &Hop) -> Option<u64> {
    let (_, _, body) = exchange(activator.admin, "/metrics", &[]);
    String::from_utf8(body).unwrap().lines().find_map(|l| {
        l.strip_prefix(
            "rouse_activator_requests_queued{namespace=\"default\",revision=\"hello-00001\"} ",
        )?
        .parse()
        .ok()
    })
}

/// `rouse activator --kubeconfig` follows the revision's ServerlessService and its own
/// ConfigMaps: the revision is known once its SKS exists, its pods come from the private
/// Service the SKS names, `config-autoscaler`'s `activator-queue-depth` bounds the waiting
/// requests and a change to it applies without a restart, and with its SKS deleted the
/// revision is forgotten.
#[test]
fn the_activator_process_follows_serverless_services_and_its_configmaps() {
    let rt = api_runtime();
    let dir = tempfile::tempdir().unwrap();
    let (fake, api) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (fake::Fake::start_on(listener), addr)
    });
    fake.put(REVISIONS, hello_revision());
    fake.put(CONFIGMAPS, config_autoscaler("1"));
    let kc = kubeconfig(dir.path(), api);
    let activator = Hop::start_from("activator", "--kubeconfig", &kc, &[]);
    eventually("synced with the API server", PATIENCE, || {
        (exchange(activator.admin, "/readyz", &[]).0 == 200).then_some(())
    });
    // The ConfigMaps were read too, in knative-serving only.
    assert!(
        fake.seen()
            .iter()
            .any(|(_, p)| p.starts_with("/api/v1/namespaces/knative-serving/configmaps")),
        "{:?}",
        fake.seen()
    );
    // No SKS yet: the revision is not known.
    assert!(!activator_knows(&activator, "hello-00001"));
    fake.put(
        SKS,
        serverless_service("hello-00001", Some("hello-00001-pods")),
    );
    eventually("the revision known with its SKS", PATIENCE, || {
        activator_knows(&activator, "hello-00001").then_some(())
    });

    // At zero, a request waits; with activator-queue-depth 1 the next one is refused at once.
    let named = [
        ("Knative-Serving-Namespace", "default"),
        ("Knative-Serving-Revision", "hello-00001"),
    ];
    let act = activator.addr;
    let first = std::thread::spawn(move || exchange(act, "/", &named));
    eventually("one request waiting", PATIENCE, || {
        (activator_queued(&activator) == Some(1)).then_some(())
    });
    let (status, _, body) = exchange(act, "/", &named);
    assert_eq!(
        (status, String::from_utf8_lossy(&body).trim()),
        (503, "activator queue full for revision hello-00001")
    );

    // The depth raised in the ConfigMap: a second request may wait (sent again while the
    // activator has not applied it yet).
    fake.put(CONFIGMAPS, config_autoscaler("2"));
    let mut second = std::thread::spawn(move || exchange(act, "/", &named));
    eventually("a second request waiting", PATIENCE, || {
        if second.is_finished() {
            let (status, _, body) = std::mem::replace(
                &mut second,
                std::thread::spawn(move || exchange(act, "/", &named)),
            )
            .join()
            .unwrap();
            assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
        }
        (activator_queued(&activator) == Some(2)).then_some(())
    });

    // The pod starts; its address is in the private Service the SKS names.
    let app_port = free_port();
    let _app = start_app(app_port);
    let sidecar = Sidecar::start(&sidecar_env(app_port));
    fake.put(
        SLICES,
        slice("hello-00001-pods", "Private", 0, sidecar.addr("serving")),
    );
    for waiting in [first, second] {
        let (status, head, body) = waiting.join().unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert!(head.contains("k-cold-start:"), "{head}");
    }

    // Its SKS deleted, the revision is forgotten.
    fake.remove(SKS, "default", "hello-00001");
    eventually("the revision forgotten with its SKS", PATIENCE, || {
        (!activator_knows(&activator, "hello-00001")).then_some(())
    });
    drop(rt);
}

/// h2c through the activator's second port (Knative's 8013), processes only: an h2c
/// revision at zero, a client speaking HTTP/2 prior knowledge (a gRPC health check) to the
/// gateway, which sends it on to the activator's h2c port, where it waits; the revision
/// wakes (an h2c app behind its queue-proxy) and the call is answered, trailers and all.
#[test]
fn an_h2c_call_at_zero_waits_on_the_activators_h2c_port_and_is_served() {
    use http_body_util::BodyExt;

    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.json");
    write_endpoints_of(&file, &[], "proxy", &[], true);
    let activator = Hop::start("activator", &file);
    let h2c_port = activator.h2c.expect("the h2c port printed");
    write_endpoints_of(&file, &[h2c_port], "proxy", &[], true);
    let gateway = Hop::start("gateway", &file);

    let gw = gateway.addr;
    let call = rt.spawn(async move {
        let mut send = h2_connect(gw).await;
        // An empty HealthCheckRequest in its gRPC frame.
        let req =
            http::Request::post("http://hello.default.example.com/grpc.health.v1.Health/Check")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(&[
                    0, 0, 0, 0, 0,
                ])))
                .unwrap();
        let resp = send.send_request(req).await.expect("the call is answered");
        let (head, body) = resp.into_parts();
        let body = body.collect().await.expect("the whole response");
        let trailers = body.trailers().cloned();
        (head, body.to_bytes(), trailers)
    });
    // It waits in the activator, which took it on its h2c port.
    eventually("the call queued in the activator", PATIENCE, || {
        (activator_queued(&activator) == Some(1)).then_some(())
    });
    assert!(!call.is_finished(), "nothing can serve the call yet");

    // The revision wakes: an h2c app and its queue-proxy.
    let app_port = free_port();
    let _app = common::sidecar::start_app_with_args(app_port, &["--h2c"], &[]);
    let mut env = sidecar_env(app_port);
    env.push(("ROUSE_QUEUE_USER_H2C", "true".into()));
    let sidecar = Sidecar::start(&env);
    write_endpoints_of(
        &file,
        &[h2c_port],
        "proxy",
        &[sidecar.addr("serving")],
        true,
    );
    let (head, body, trailers) = rt
        .block_on(async { tokio::time::timeout(PATIENCE, call).await })
        .expect("served within the bound")
        .unwrap();
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.version, http::Version::HTTP_2);
    assert!(head.headers.contains_key("k-cold-start"), "{head:?}");
    // HealthCheckResponse{status: SERVING}, then grpc-status 0 in the trailers.
    assert_eq!(body.as_ref(), [0, 0, 0, 0, 2, 0x08, 0x01]);
    let trailers = trailers.expect("trailers survive both hops");
    assert_eq!(trailers["grpc-status"], "0");
    // The activator forwarded it (its count by status code).
    let (_, _, metrics) = exchange(activator.admin, "/metrics", &[]);
    assert!(
        String::from_utf8(metrics).unwrap().contains(
            "rouse_activator_requests_total{namespace=\"default\",revision=\"hello-00001\",code=\"200\"} 1"
        ),
        "the activator answered it"
    );
}

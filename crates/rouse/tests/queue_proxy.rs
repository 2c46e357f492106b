//! `rouse queue-proxy`, the sidecar, as a real process in front of the real test app, on
//! ephemeral loopback ports: Knative's env contract, its probe protocol, the protobuf `Stat`
//! the autoscaler scrapes, bad environment, and the drain on SIGTERM.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{PATIENCE, eventually, rouse_bin, testapp_bin};

/// A free loopback port for the test app (which takes a fixed `PORT`).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_app(port: u16) -> Killed {
    Killed(
        Command::new(testapp_bin())
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("test app starts"),
    )
}

fn sidecar_env(user_port: u16) -> Vec<(&'static str, String)> {
    [
        ("SERVING_NAMESPACE", "default"),
        ("SERVING_SERVICE", "hello"),
        ("SERVING_CONFIGURATION", "hello"),
        ("SERVING_REVISION", "hello-00001"),
        ("SERVING_POD", "hello-00001-deployment-x1"),
        ("SERVING_POD_IP", "127.0.0.1"),
        ("QUEUE_SERVING_PORT", "0"),
        ("QUEUE_SERVING_TLS_PORT", "8112"),
        ("CONTAINER_CONCURRENCY", "0"),
        ("REVISION_TIMEOUT_SECONDS", "300"),
        ("REVISION_RESPONSE_START_TIMEOUT_SECONDS", "0"),
        ("REVISION_IDLE_TIMEOUT_SECONDS", "0"),
        ("SERVING_LOGGING_CONFIG", ""),
        ("SERVING_LOGGING_LEVEL", ""),
        (
            "SERVING_READINESS_PROBE",
            r#"{"tcpSocket":{"port":0},"successThreshold":1}"#,
        ),
        ("ENABLE_HTTP2_AUTO_DETECTION", "false"),
        ("ROUSE_QUEUE_BIND", "127.0.0.1"),
        ("ROUSE_QUEUE_H2C_PORT", "0"),
        ("ROUSE_QUEUE_ADMIN_PORT", "0"),
        ("ROUSE_QUEUE_METRICS_PORT", "0"),
        ("ROUSE_QUEUE_USER_METRICS_PORT", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_string()))
    .chain([("USER_PORT", user_port.to_string())])
    .collect()
}

/// A running sidecar and the addresses it printed.
struct Sidecar {
    child: Child,
    addrs: HashMap<String, SocketAddr>,
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

impl Sidecar {
    fn start(env: &[(&str, String)]) -> Sidecar {
        let mut child = Command::new(sidecar_bin())
            .env_clear()
            .envs(env.iter().map(|(k, v)| (*k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("rouse queue-proxy starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addrs = line
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            .collect::<HashMap<_, SocketAddr>>();
        assert!(addrs.contains_key("serving"), "first line: {line:?}");
        Sidecar { child, addrs }
    }

    fn addr(&self, name: &str) -> SocketAddr {
        self.addrs[name]
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request (`Connection: close`); the status, head (lowercase) and raw body.
fn exchange(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req =
        format!("GET {path} HTTP/1.1\r\nHost: hello.default.example.com\r\nConnection: close\r\n");
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
}

impl Hop {
    fn start(role: &str, endpoints: &std::path::Path) -> Hop {
        let mut child = Command::new(rouse_bin())
            .args([role, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--metrics", "127.0.0.1:0", "--poll", "20ms", "--endpoints"])
            .arg(endpoints)
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
    let doc = serde_json::json!({
        "activators": activators.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "revisions": [{
            "namespace": "default",
            "name": "hello-00001",
            "mode": mode,
            "pods": pods.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "timeoutSeconds": 120,
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
    // The activator answers its own probe while the request waits.
    let (status, _, body) = exchange(activator.addr, "/", &[("K-Network-Probe", "activator")]);
    assert_eq!((status, body.as_slice()), (200, b"activator".as_slice()));
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

//! WebSocket end to end: a raw-TCP WebSocket client → gateway → (activator) → real
//! queue-proxy → the real `rouse-testapp` process (`/ws` echo).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rouse_activator::{Activator, ActivatorConfig, RevisionParams};
use rouse_gateway::{Gateway, Mode, RouteTarget, RoutingTable};
use rouse_queue::{QueueConfig, QueueProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

const BOUND: Duration = Duration::from_secs(10);
const NS: &str = "default";
/// RFC 6455 §1.3's sample key and the accept value it must get back.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The `rouse-testapp` binary, built once per test run.
fn testapp() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = std::process::Command::new(cargo)
            .args(["build", "-p", "testapps", "--bin", "rouse-testapp"])
            .arg("--message-format=json")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run cargo build");
        assert!(out.status.success(), "cargo build -p testapps failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["target"]["name"] == "rouse-testapp")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported the rouse-testapp executable")
    })
}

/// A test app process and the real queue-proxy in front of it (ready).
struct Instance {
    qp: QueueProxy,
    _app: Child,
}

async fn instance(rev: &str) -> Instance {
    let bin = tokio::task::spawn_blocking(|| testapp().to_path_buf())
        .await
        .unwrap();
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let app = Command::new(bin)
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start rouse-testapp");
    let qp = QueueProxy::start(QueueConfig::new(([127, 0, 0, 1], port).into(), NS, rev))
        .await
        .unwrap();
    let mut ready = qp.ready();
    tokio::time::timeout(BOUND, ready.wait_for(|r| *r))
        .await
        .expect("the test app became ready")
        .unwrap();
    Instance { qp, _app: app }
}

struct Running {
    addr: SocketAddr,
    gw: Arc<Gateway>,
    act: Arc<Activator>,
    pokes: Arc<AtomicUsize>,
}

async fn gateway(host: &str, rev: &str) -> Running {
    let pokes = Arc::new(AtomicUsize::new(0));
    let p = pokes.clone();
    let act = Activator::new(
        ActivatorConfig::default(),
        Arc::new(move |_: &str, _: &str| {
            p.fetch_add(1, Ordering::SeqCst);
        }),
    );
    let gw = Gateway::new(act.clone());
    let mut table = RoutingTable::new();
    table.insert(
        host.to_string(),
        vec![RouteTarget {
            namespace: NS.into(),
            revision: rev.into(),
            percent: 100,
        }],
    );
    gw.set_routes(table);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(gw.clone().serve(listener, std::future::pending()));
    Running {
        addr,
        gw,
        act,
        pokes,
    }
}

/// Sends a request head asking to switch to `protocol` and reads the response head (byte by
/// byte, so nothing after it is consumed).
async fn handshake(gw: SocketAddr, host: &str, path: &str, protocol: &str) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(gw).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(BOUND, tcp.read(&mut byte))
            .await
            .expect("response head in time")
            .unwrap();
        assert_eq!(n, 1, "connection closed in the head: {head:?}");
        head.push(byte[0]);
    }
    (tcp, String::from_utf8(head).unwrap())
}

/// The value of a header in a response head (names matched case-insensitively).
fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Opens a WebSocket and checks the server's handshake answer.
async fn open_ws(gw: SocketAddr, host: &str) -> (TcpStream, String) {
    let (tcp, head) = handshake(gw, host, "/ws", "websocket").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(header_value(&head, "sec-websocket-accept"), Some(ACCEPT));
    assert!(
        header_value(&head, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{head}"
    );
    (tcp, head)
}

/// Sends one masked frame (clients always mask).
async fn send_frame(tcp: &mut TcpStream, opcode: u8, payload: &[u8]) {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&frame).await.unwrap();
}

/// Reads one unmasked frame: (opcode, payload).
async fn read_frame(tcp: &mut TcpStream) -> (u8, Vec<u8>) {
    tokio::time::timeout(BOUND, async {
        let mut head = [0u8; 2];
        tcp.read_exact(&mut head).await.unwrap();
        assert_eq!(head[1] & 0x80, 0, "a server frame must not be masked");
        let len = match head[1] & 0x7f {
            126 => usize::from(tcp.read_u16().await.unwrap()),
            127 => tcp.read_u64().await.unwrap() as usize,
            n => usize::from(n),
        };
        let mut payload = vec![0u8; len];
        tcp.read_exact(&mut payload).await.unwrap();
        (head[0] & 0x0f, payload)
    })
    .await
    .expect("a frame in time")
}

/// Text and a 16-bit-length binary message come back as sent.
async fn echo_messages(tcp: &mut TcpStream) {
    send_frame(tcp, 0x1, b"hello through rouse").await;
    assert_eq!(
        read_frame(tcp).await,
        (0x1, b"hello through rouse".to_vec())
    );
    let big: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8).collect();
    send_frame(tcp, 0x2, &big).await;
    assert_eq!(read_frame(tcp).await, (0x2, big));
}

/// The closing handshake: the close comes back, then the connection ends.
async fn close_ws(mut tcp: TcpStream) {
    send_frame(&mut tcp, 0x8, &1000u16.to_be_bytes()).await;
    assert_eq!(
        read_frame(&mut tcp).await,
        (0x8, 1000u16.to_be_bytes().to_vec())
    );
    let mut rest = Vec::new();
    let n = tokio::time::timeout(BOUND, tcp.read_to_end(&mut rest))
        .await
        .expect("the connection ends after the close");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?} {rest:?}");
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echoes_in_serve_mode_and_counts_in_flight_until_closed() {
    let (host, rev) = ("ws.default.example.com", "ws-00001");
    let g = gateway(host, rev).await;
    let inst = instance(rev).await;
    g.gw.set_endpoints(NS, rev, vec![inst.qp.addr()]);

    let (mut tcp, _) = open_ws(g.addr, host).await;
    echo_messages(&mut tcp).await;
    assert_eq!(g.gw.in_flight_for(NS, rev), 1);
    assert_eq!(g.gw.in_flight(), 1);
    assert_eq!(inst.qp.in_flight(), 1);
    // Straight to the instance: the activator never saw it.
    assert_eq!(g.act.waiting(NS, rev), 0);
    assert!(g.act.take_stats().is_empty());
    // A second socket alongside.
    let (mut second, _) = open_ws(g.addr, host).await;
    echo_messages(&mut second).await;
    assert_eq!(g.gw.in_flight_for(NS, rev), 2);
    close_ws(second).await;
    wait_until("one socket left", || g.gw.in_flight_for(NS, rev) == 1).await;
    echo_messages(&mut tcp).await;

    close_ws(tcp).await;
    wait_until("the closed socket no longer counted", || {
        g.gw.in_flight_for(NS, rev) == 0 && g.gw.in_flight() == 0
    })
    .await;
    wait_until("the queue-proxy released it", || inst.qp.in_flight() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_at_zero_waits_in_the_activator_then_echoes() {
    let (host, rev) = ("zero.default.example.com", "zero-00001");
    let g = gateway(host, rev).await;
    g.act.set_revision(
        NS,
        rev,
        RevisionParams {
            container_concurrency: 1,
            ..RevisionParams::default()
        },
    );
    g.gw.set_revision(NS, rev, Mode::Proxy, vec![], false);
    let addr = g.addr;
    let opening = tokio::spawn(async move { open_ws(addr, host).await });
    wait_until("the handshake waits in the activator", || {
        g.act.waiting(NS, rev) == 1
    })
    .await;
    assert_eq!(g.pokes.load(Ordering::SeqCst), 1, "one activation");
    assert_eq!(g.gw.in_flight_for(NS, rev), 1);

    // The revision wakes: an instance appears.
    let inst = instance(rev).await;
    g.act.set_backends(NS, rev, vec![inst.qp.addr()]);
    let (mut tcp, head) = tokio::time::timeout(BOUND, opening)
        .await
        .expect("the handshake completes once an instance is up")
        .unwrap();
    assert!(
        header_value(&head, "k-cold-start").is_some(),
        "waited for an activation: {head}"
    );
    echo_messages(&mut tcp).await;
    // The open socket is the activator's load (a new period starts here).
    g.act.take_stats();
    echo_messages(&mut tcp).await;
    let stats = g.act.take_stats();
    let stat = stats
        .iter()
        .find(|s| s.revision == rev)
        .expect("load reported while the socket is open");
    assert!((stat.average_concurrency - 1.0).abs() < 1e-6, "{stats:?}");
    assert_eq!(g.gw.in_flight_for(NS, rev), 1);
    assert_eq!(g.act.waiting(NS, rev), 0);

    close_ws(tcp).await;
    wait_until("the closed socket no longer counted", || {
        g.gw.in_flight_for(NS, rev) == 0
    })
    .await;
    // Once closed it is no load at all: a period comes with no report for the revision.
    wait_until("the activator reports no load", || {
        g.act.take_stats().iter().all(|s| s.revision != rev)
    })
    .await;
    // And its slot is free again (containerConcurrency 1): the next socket gets through.
    let (tcp, _) = open_ws(g.addr, host).await;
    close_ws(tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_falls_back_to_the_activator_when_the_endpoint_refuses() {
    let (host, rev) = ("fb.default.example.com", "fb-00001");
    let g = gateway(host, rev).await;
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let inst = instance(rev).await;
    g.gw.set_endpoints(NS, rev, vec![dead]);
    g.act.set_backends(NS, rev, vec![inst.qp.addr()]);
    let (mut tcp, _) = open_ws(g.addr, host).await;
    echo_messages(&mut tcp).await;
    assert!(
        g.act.take_stats().iter().any(|s| s.revision == rev),
        "carried by the activator"
    );
    close_ws(tcp).await;
    wait_until("nothing in flight", || g.gw.in_flight_for(NS, rev) == 0).await;
}

/// Reads a response body framed by Content-Length after its head.
async fn body(tcp: &mut TcpStream, head: &str) -> String {
    let len: usize = header_value(head, "content-length")
        .expect("a content-length")
        .parse()
        .unwrap();
    let mut buf = vec![0u8; len];
    tokio::time::timeout(BOUND, tcp.read_exact(&mut buf))
        .await
        .expect("body in time")
        .unwrap();
    String::from_utf8(buf).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_upgrades_are_passed_back_unchanged() {
    let (host, rev) = ("no.default.example.com", "no-00001");
    let g = gateway(host, rev).await;
    let inst = instance(rev).await;
    g.act.set_backends(NS, rev, vec![inst.qp.addr()]);
    for mode in [Mode::Serve, Mode::Proxy] {
        g.gw.set_revision(NS, rev, mode, vec![inst.qp.addr()], false);
        // The app answers 400 to a handshake it does not speak.
        let (mut tcp, head) = handshake(g.addr, host, "/ws", "something-else").await;
        assert!(head.starts_with("HTTP/1.1 400"), "{mode:?}: {head}");
        let text = body(&mut tcp, &head).await;
        assert!(text.contains("expected a WebSocket handshake"), "{text}");
        // An explicit status, and a plain 200 with its body.
        let (_, head) = handshake(g.addr, host, "/status?code=418", "websocket").await;
        assert!(head.starts_with("HTTP/1.1 418"), "{mode:?}: {head}");
        let (mut tcp, head) = handshake(g.addr, host, "/", "websocket").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{mode:?}: {head}");
        assert!(header_value(&head, "upgrade").is_none(), "{head}");
        assert_eq!(
            body(&mut tcp, &head).await,
            "Hello World! How about some tasty noodles?\n"
        );
        wait_until("declined requests done", || {
            g.gw.in_flight_for(NS, rev) == 0
        })
        .await;
    }
}

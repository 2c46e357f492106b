//! gRPC and h2c end to end: an HTTP/2 (prior knowledge) gRPC client → gateway → (activator) →
//! real queue-proxy speaking h2c → the real `rouse-testapp --h2c` process (hand-written gRPC
//! health service and bidirectional echo). Trailers and full-duplex streams must survive every
//! hop; an HTTP/1.1 client's plain requests must too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rouse_activator::{Activator, ActivatorConfig, RevisionParams};
use rouse_gateway::{Gateway, Mode, RouteTarget, RoutingTable};
use rouse_http::{Body, boxed, full};
use rouse_queue::{QueueConfig, QueueProxy};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const BOUND: Duration = Duration::from_secs(10);
const NS: &str = "default";
const CHECK: &str = "/grpc.health.v1.Health/Check";
const WATCH: &str = "/grpc.health.v1.Health/Watch";
const ECHO: &str = "/rouse.test.Echo/Stream";
/// A `HealthCheckResponse{status: SERVING}` in its gRPC frame.
const SERVING_FRAME: [u8; 7] = [0, 0, 0, 0, 2, 0x08, 0x01];

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

/// A `rouse-testapp --h2c` process and a real queue-proxy speaking h2c to it (ready).
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
        .arg("--h2c")
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start rouse-testapp");
    let qp = QueueProxy::start(QueueConfig {
        h2c: true,
        ..QueueConfig::new(([127, 0, 0, 1], port).into(), NS, rev)
    })
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

/// A gateway routing `host` to `rev`, an h2c revision (the activator knows it too).
async fn gateway(host: &str, rev: &str) -> Running {
    let pokes = Arc::new(AtomicUsize::new(0));
    let p = pokes.clone();
    let act = Activator::new(
        ActivatorConfig::default(),
        Arc::new(move |_: &str, _: &str| {
            p.fetch_add(1, Ordering::SeqCst);
        }),
    );
    act.set_revision(
        NS,
        rev,
        RevisionParams {
            h2c: true,
            ..RevisionParams::default()
        },
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

/// An HTTP/2 (prior knowledge) connection to `addr`, as a gRPC client opens.
async fn h2_connect(addr: SocketAddr) -> SendRequest<Body> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    send
}

/// A gRPC call's request head for `method` on `host`.
fn grpc_request(host: &str, method: &str, body: Body) -> Request<Body> {
    Request::post(format!("http://{host}{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap()
}

/// Frames a message as gRPC does.
fn frame(msg: &[u8]) -> Bytes {
    let mut out = vec![0];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out.into()
}

/// A request body fed by the returned sender, one data frame per send, ending when it drops.
fn channel_body() -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(Frame::data(b)), rx))
    });
    (tx, boxed(StreamBody::new(frames)))
}

/// Reads a gRPC response's messages (whole frames) and trailers.
struct Call {
    body: Incoming,
    buf: BytesMut,
    trailers: Option<HeaderMap>,
}

impl Call {
    fn new(resp: Response<Incoming>) -> Call {
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        Call {
            body: resp.into_body(),
            buf: BytesMut::new(),
            trailers: None,
        }
    }

    /// The next message (framed), or `None` once the trailers came.
    async fn next(&mut self) -> Option<Bytes> {
        tokio::time::timeout(BOUND, async {
            loop {
                if self.buf.len() >= 5 {
                    let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                    if self.buf.len() >= 5 + len {
                        return Some(self.buf.split_to(5 + len).freeze());
                    }
                }
                match self.body.frame().await {
                    None => {
                        assert!(self.buf.is_empty(), "the body ended inside a message");
                        return None;
                    }
                    Some(f) => {
                        let f = f.expect("the response body streams without error");
                        match f.into_data() {
                            Ok(d) => self.buf.extend_from_slice(&d),
                            Err(f) => {
                                self.trailers = f.into_trailers().ok();
                                assert!(self.buf.is_empty(), "trailers inside a message");
                                return None;
                            }
                        }
                    }
                }
            }
        })
        .await
        .expect("the next message or the trailers in time")
    }

    /// Reads to the end; returns the remaining messages and `grpc-status`.
    async fn finish(mut self) -> (Vec<Bytes>, String) {
        let mut msgs = Vec::new();
        while let Some(m) = self.next().await {
            msgs.push(m);
        }
        let status = self
            .trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .map(|v| v.to_str().unwrap().to_string())
            .expect("trailers with grpc-status");
        (msgs, status)
    }
}

/// A unary Check of `service` (empty: the server as a whole).
async fn check(send: &mut SendRequest<Body>, host: &str, service: &str) -> (Vec<Bytes>, String) {
    check_within(send, host, service, BOUND).await
}

/// [`check`], its response head awaited up to `limit`.
async fn check_within(
    send: &mut SendRequest<Body>,
    host: &str,
    service: &str,
    limit: Duration,
) -> (Vec<Bytes>, String) {
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.extend_from_slice(&[0x0a, service.len() as u8]);
        msg.extend_from_slice(service.as_bytes());
    }
    let req = grpc_request(host, CHECK, full(frame(&msg)));
    let resp = tokio::time::timeout(limit, send.send_request(req))
        .await
        .expect("a response head in time")
        .expect("the call is answered");
    Call::new(resp).finish().await
}

/// A bidirectional echo: each message sent comes back before the next is sent (full duplex),
/// then the client ends its side and the call ends OK.
async fn bidi_echo(send: &mut SendRequest<Body>, host: &str) {
    let (tx, body) = channel_body();
    let resp = tokio::time::timeout(BOUND, async {
        // The response head may wait for the first message (a cold start, say).
        let pending = send.send_request(grpc_request(host, ECHO, body));
        tx.send(frame(b"first")).await.unwrap();
        pending.await
    })
    .await
    .expect("a response head in time")
    .expect("the call is answered");
    let mut call = Call::new(resp);
    assert_eq!(call.next().await, Some(frame(b"first")));
    for i in 0..3 {
        let msg = format!("message {i} {}", "x".repeat(i * 1000));
        tx.send(frame(msg.as_bytes())).await.unwrap();
        assert_eq!(call.next().await, Some(frame(msg.as_bytes())));
    }
    drop(tx);
    let (rest, status) = call.finish().await;
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(status, "0");
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
async fn grpc_unary_and_server_streaming_in_serve_mode() {
    let (host, rev) = ("grpc.default.example.com", "grpc-00001");
    let g = gateway(host, rev).await;
    let inst = instance(rev).await;
    g.gw.set_revision(NS, rev, Mode::Serve, vec![inst.qp.addr()], true);
    assert!(g.gw.is_h2c(NS, rev));

    let mut send = h2_connect(g.addr).await;
    let (msgs, status) = check(&mut send, host, "").await;
    assert_eq!(msgs, vec![Bytes::from_static(&SERVING_FRAME)]);
    assert_eq!(status, "0");
    // A non-zero status reaches the client in the trailers too.
    let (msgs, status) = check(&mut send, host, "no.such.Service").await;
    assert!(msgs.is_empty(), "{msgs:?}");
    assert_eq!(status, "5");

    // Server streaming: SERVING every 200 ms for 1 s, each as it is sent, then OK.
    let req = grpc_request(host, WATCH, full(frame(&[])));
    let resp = tokio::time::timeout(BOUND, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let mut call = Call::new(resp);
    let first = tokio::time::Instant::now();
    assert_eq!(call.next().await, Some(Bytes::from_static(&SERVING_FRAME)));
    assert_eq!(call.next().await, Some(Bytes::from_static(&SERVING_FRAME)));
    let second = first.elapsed();
    let (rest, status) = call.finish().await;
    assert!(rest.iter().all(|m| m[..] == SERVING_FRAME), "{rest:?}");
    assert_eq!(status, "0");
    assert!(
        second >= Duration::from_millis(100),
        "messages streamed as sent, not buffered: the second came {second:?} after the first"
    );

    // Straight to the instance: the activator never saw these calls.
    assert_eq!(g.pokes.load(Ordering::SeqCst), 0);
    assert!(g.act.take_stats().is_empty());
    wait_until("nothing in flight", || {
        g.gw.in_flight() == 0 && inst.qp.in_flight() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_check_at_zero_waits_in_the_activator_then_answers() {
    let (host, rev) = ("cold.default.example.com", "cold-00001");
    let g = gateway(host, rev).await;
    g.gw.set_revision(NS, rev, Mode::Proxy, vec![], true);
    // Built before the clock of the call starts.
    tokio::task::spawn_blocking(testapp).await.unwrap();

    let addr = g.addr;
    let call = tokio::spawn(async move {
        let mut send = h2_connect(addr).await;
        // The wait covers the instance's start and readiness (each bounded below).
        check_within(&mut send, host, "", 3 * BOUND).await
    });
    wait_until("the call waits in the activator", || {
        g.act.waiting(NS, rev) == 1
    })
    .await;
    assert_eq!(g.pokes.load(Ordering::SeqCst), 1, "one activation");

    // The instance comes up; the activator probes it and releases the call over h2c.
    let inst = instance(rev).await;
    g.act.set_backends(NS, rev, vec![inst.qp.addr()]);
    let (msgs, status) = tokio::time::timeout(3 * BOUND, call)
        .await
        .expect("answered in time")
        .unwrap();
    assert_eq!(msgs, vec![Bytes::from_static(&SERVING_FRAME)]);
    assert_eq!(status, "0");

    // Warm, still through the activator (Proxy mode): the same.
    let mut send = h2_connect(g.addr).await;
    let (msgs, status) = check(&mut send, host, "").await;
    assert_eq!((msgs.len(), status.as_str()), (1, "0"));
    assert_eq!(g.pokes.load(Ordering::SeqCst), 1);
    wait_until("nothing in flight", || {
        g.gw.in_flight() == 0 && inst.qp.in_flight() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bidi_echo_is_full_duplex_in_both_modes() {
    let (host, rev) = ("echo.default.example.com", "echo-00001");
    let g = gateway(host, rev).await;
    let inst = instance(rev).await;
    g.act.set_backends(NS, rev, vec![inst.qp.addr()]);
    wait_until("the activator probed the instance", || {
        g.act.ready_backends(NS, rev).len() == 1
    })
    .await;
    for mode in [Mode::Serve, Mode::Proxy] {
        g.gw.set_revision(NS, rev, mode, vec![inst.qp.addr()], true);
        let mut send = h2_connect(g.addr).await;
        bidi_echo(&mut send, host).await;
        // Two streams at once on one client connection, each duplex on its own.
        let mut other = send.clone();
        let (a, b) = tokio::join!(bidi_echo(&mut send, host), bidi_echo(&mut other, host));
        let ((), ()) = (a, b);
        wait_until("nothing in flight", || {
            g.gw.in_flight() == 0 && inst.qp.in_flight() == 0
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_clients_reach_an_h2c_revision() {
    let (host, rev) = ("plain.default.example.com", "plain-00001");
    let g = gateway(host, rev).await;
    let inst = instance(rev).await;
    g.act.set_backends(NS, rev, vec![inst.qp.addr()]);
    let c: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    for mode in [Mode::Serve, Mode::Proxy] {
        g.gw.set_revision(NS, rev, mode, vec![inst.qp.addr()], true);
        let req = Request::get(format!("http://{}/headers?x=1", g.addr))
            .header("host", host)
            .header("x-user", "kept")
            .body(Full::default())
            .unwrap();
        let resp = tokio::time::timeout(BOUND, c.request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_11);
        assert_eq!(resp.status(), StatusCode::OK, "{mode:?}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
        // The app got it over HTTP/2, Host, path and user headers kept.
        assert_eq!(seen["version"], "HTTP/2.0", "{mode:?}: {seen}");
        assert_eq!(seen["host"], host, "{seen}");
        assert_eq!(seen["path"], "/headers?x=1", "{seen}");
        assert_eq!(seen["headers"]["x-user"], "kept", "{seen}");

        // A request body streams through too.
        let req = Request::post(format!("http://{}/echo", g.addr))
            .header("host", host)
            .body(Full::new(Bytes::from(vec![b'z'; 100_000])))
            .unwrap();
        let resp = tokio::time::timeout(BOUND, c.request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.remaining(), 100_000);
        assert!(body.copy_to_bytes(100_000).iter().all(|b| *b == b'z'));
    }
}

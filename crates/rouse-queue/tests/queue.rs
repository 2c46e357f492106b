//! The queue-proxy against a real hyper app on loopback.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rouse_http::{Body, boxed, full};
use rouse_queue::{ProbeAction, ProbeSpec, QueueConfig, QueueProxy};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const BOUND: Duration = Duration::from_secs(10);

/// A small app: `/` hello, `/headers` dumps headers, `/slow?ms=N`, `/echo` streams the request
/// body back, `/stream` streams what the test feeds it, `/ready` answers per a flag.
struct App {
    addr: SocketAddr,
    ready: Arc<AtomicBool>,
    stream: Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>,
    /// Connections accepted so far.
    conns: Arc<AtomicUsize>,
}

impl App {
    async fn start(h2c: bool) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Arc::new(AtomicBool::new(true));
        let stream = Arc::new(Mutex::new(None));
        let conns = Arc::new(AtomicUsize::new(0));
        let (r, s, n) = (ready.clone(), stream.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                n.fetch_add(1, Ordering::SeqCst);
                let (r, s) = (r.clone(), s.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| app(req, r.clone(), s.clone()));
                    let io = TokioIo::new(tcp);
                    if h2c {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    }
                });
            }
        });
        App {
            addr,
            ready,
            stream,
            conns,
        }
    }

    /// Feeds `/stream`: the returned sender's chunks become the next `/stream` response.
    fn feed(&self) -> mpsc::Sender<Bytes> {
        let (tx, rx) = mpsc::channel(4);
        *self.stream.lock().unwrap() = Some(rx);
        tx
    }
}

fn channel_body(rx: mpsc::Receiver<Bytes>) -> Body {
    let s = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    boxed(StreamBody::new(s))
}

async fn app(
    req: Request<Incoming>,
    ready: Arc<AtomicBool>,
    stream: Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>,
) -> Result<Response<Body>, Infallible> {
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let resp = match req.uri().path() {
        "/headers" => {
            let mut out = format!("version: {:?}\n", req.version());
            for (k, v) in req.headers() {
                out.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
            }
            Response::new(full(out))
        }
        "/slow" => {
            let ms = query.get("ms").and_then(|v| v.parse().ok()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full("slept"))
        }
        "/echo" => Response::new(boxed(req.into_body())),
        "/stream" => {
            let rx = stream.lock().unwrap().take().expect("test feeds /stream");
            Response::new(channel_body(rx))
        }
        "/ready" => {
            let mut r = Response::new(full("ready?"));
            if !ready.load(Ordering::SeqCst) {
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            r
        }
        _ => Response::new(full("hello from app")),
    };
    Ok(resp)
}

fn cfg(app: SocketAddr, readiness: ProbeSpec) -> QueueConfig {
    QueueConfig {
        readiness,
        ..QueueConfig::new(app, "default", "hello-00001")
    }
}

fn http_probe(period: Duration) -> ProbeSpec {
    ProbeSpec {
        action: ProbeAction::Http {
            path: "/ready".into(),
            headers: vec![],
        },
        period,
        timeout: Duration::from_millis(500),
        success_threshold: 1,
        failure_threshold: 1,
        initial_delay: Duration::ZERO,
    }
}

fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn get(addr: SocketAddr, path: &str) -> Request<Body> {
    Request::get(format!("http://{addr}{path}"))
        .body(full(""))
        .unwrap()
}

async fn text(resp: Response<Incoming>) -> (StatusCode, String) {
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_ready(qp: &QueueProxy, want: bool) {
    let mut rx = qp.ready();
    tokio::time::timeout(BOUND, rx.wait_for(|r| *r == want))
        .await
        .expect("readiness did not change in time")
        .unwrap();
}

async fn probe(qp: &QueueProxy, value: &str) -> (StatusCode, String) {
    let req = Request::get(format!("http://{}/healthz", qp.addr()))
        .header("K-Network-Probe", value)
        .body(full(""))
        .unwrap();
    text(client().request(req).await.unwrap()).await
}

#[tokio::test]
async fn proxies_requests_and_cleans_headers() {
    let app = App::start(false).await;
    let qp = QueueProxy::start(cfg(app.addr, ProbeSpec::default()))
        .await
        .unwrap();
    wait_ready(&qp, true).await;
    let c = client();
    let (status, body) = text(c.request(get(qp.addr(), "/")).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello from app"));

    let req = Request::get(format!("http://{}/headers", qp.addr()))
        .header("Host", "hello.default.example.com")
        .header("Knative-Serving-Revision", "evil")
        .header("K-Proxy-Request", "activator")
        .header("K-Network-Hash", "x")
        .header("X-User", "kept")
        .header("X-Forwarded-For", "203.0.113.7")
        .header("X-Forwarded-Proto", "https")
        .body(full(""))
        .unwrap();
    let (_, headers) = text(c.request(req).await.unwrap()).await;
    assert!(
        headers.contains("host: hello.default.example.com\n"),
        "{headers}"
    );
    assert!(headers.contains("x-user: kept\n"), "{headers}");
    // The sidecar is not the edge: what the gateway said about the client goes on unchanged.
    assert!(
        headers.contains("x-forwarded-for: 203.0.113.7\n"),
        "{headers}"
    );
    assert!(headers.contains("x-forwarded-proto: https\n"), "{headers}");
    assert!(!headers.contains("forwarded: for="), "{headers}");
    for gone in [
        "knative-serving-revision",
        "k-proxy-request",
        "k-network-hash",
    ] {
        assert!(!headers.contains(gone), "{gone} reached the app: {headers}");
    }

    // A proxy hop that moved the client's Host aside gets it restored.
    let req = Request::get(format!("http://{}/headers", qp.addr()))
        .header("Host", "activator.internal")
        .header("K-Original-Host", "hello.default.example.com")
        .body(full(""))
        .unwrap();
    let (_, headers) = text(c.request(req).await.unwrap()).await;
    assert!(
        headers.contains("host: hello.default.example.com\n"),
        "{headers}"
    );
    assert!(!headers.contains("k-original-host"), "{headers}");
}

#[tokio::test]
async fn speaks_h2c_to_an_h2c_app() {
    let app = App::start(true).await;
    let mut c = cfg(app.addr, ProbeSpec::default());
    c.h2c = true;
    let qp = QueueProxy::start(c).await.unwrap();
    wait_ready(&qp, true).await;
    let req = Request::get(format!("http://{}/headers", qp.addr()))
        .header("Host", "h2.example")
        .body(full(""))
        .unwrap();
    let (status, headers) = text(client().request(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.contains("version: HTTP/2.0"), "{headers}");
    assert!(headers.contains("host: h2.example"), "{headers}");
}

#[tokio::test]
async fn upstream_connect_failure_is_502() {
    // A port nothing listens on: bind, note, close.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let qp = QueueProxy::start(cfg(dead, ProbeSpec::default()))
        .await
        .unwrap();
    let (status, body) = text(client().request(get(qp.addr(), "/")).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("cannot connect"), "{body}");
    assert!(!qp.is_ready());
    assert_eq!(qp.in_flight(), 0);
}

#[tokio::test]
async fn health_probe_follows_readiness_and_flips() {
    let app = App::start(false).await;
    app.ready.store(false, Ordering::SeqCst);
    let qp = QueueProxy::start(cfg(app.addr, http_probe(Duration::from_millis(50))))
        .await
        .unwrap();
    assert_eq!(probe(&qp, "queue").await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(probe(&qp, "bogus").await.0, StatusCode::BAD_REQUEST);

    app.ready.store(true, Ordering::SeqCst);
    wait_ready(&qp, true).await;
    assert_eq!(
        probe(&qp, "queue").await,
        (StatusCode::OK, "queue".to_string())
    );

    // With a period, a ready app that starts failing goes not ready, and comes back.
    app.ready.store(false, Ordering::SeqCst);
    wait_ready(&qp, false).await;
    assert_eq!(probe(&qp, "queue").await.0, StatusCode::SERVICE_UNAVAILABLE);
    app.ready.store(true, Ordering::SeqCst);
    wait_ready(&qp, true).await;

    // The runtime's restart signals: down at once, probing again after a start.
    qp.app_stopped();
    assert!(!qp.is_ready());
    qp.app_started();
    wait_ready(&qp, true).await;
}

#[tokio::test]
async fn aggressive_mode_recovers_through_background_checks() {
    let app = App::start(false).await;
    let qp = QueueProxy::start(cfg(app.addr, http_probe(Duration::ZERO)))
        .await
        .unwrap();
    wait_ready(&qp, true).await;
    app.ready.store(false, Ordering::SeqCst);
    wait_ready(&qp, false).await;
    app.ready.store(true, Ordering::SeqCst);
    wait_ready(&qp, true).await;
}

#[tokio::test]
async fn response_bodies_stream_unbuffered_and_count_in_flight() {
    let app = App::start(false).await;
    let qp = QueueProxy::start(cfg(app.addr, ProbeSpec::default()))
        .await
        .unwrap();
    let feed = app.feed();
    let resp = client().request(get(qp.addr(), "/stream")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    assert_eq!(qp.in_flight(), 1);
    for chunk in ["first ", "second"] {
        feed.send(Bytes::from(chunk)).await.unwrap();
        // This chunk arrives before the next one exists: nothing waits for the whole body.
        let frame = tokio::time::timeout(BOUND, body.frame())
            .await
            .expect("chunk not forwarded")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), chunk);
        assert_eq!(qp.in_flight(), 1, "a streaming response is in flight");
    }
    drop(feed);
    assert!(body.collect().await.unwrap().to_bytes().is_empty());
    wait_until("in-flight back to 0", || qp.in_flight() == 0).await;
}

#[tokio::test]
async fn request_bodies_stream_unbuffered() {
    let app = App::start(false).await;
    // Body buffering off (`rouse.dev/request-body-buffer: "0"`): a request body streams both
    // ways at once.
    let qp = QueueProxy::start(QueueConfig {
        request_body_buffer: 0,
        ..cfg(app.addr, ProbeSpec::default())
    })
    .await
    .unwrap();
    let (tx, rx) = mpsc::channel(4);
    let req = Request::post(format!("http://{}/echo", qp.addr()))
        .body(channel_body(rx))
        .unwrap();
    let c = client();
    let pending = tokio::spawn(async move { c.request(req).await });
    tx.send(Bytes::from("ping-1")).await.unwrap();
    let resp = tokio::time::timeout(BOUND, pending)
        .await
        .expect("response head not forwarded")
        .unwrap()
        .unwrap();
    let mut body = resp.into_body();
    let frame = tokio::time::timeout(BOUND, body.frame())
        .await
        .expect("first request chunk was not streamed through")
        .unwrap()
        .unwrap();
    assert_eq!(frame.into_data().unwrap(), "ping-1");
    tx.send(Bytes::from("ping-2")).await.unwrap();
    drop(tx);
    assert_eq!(body.collect().await.unwrap().to_bytes(), "ping-2");
}

#[tokio::test]
async fn keeps_connections_to_the_app_alive() {
    let app = App::start(false).await;
    let once = ProbeSpec {
        period: Duration::from_secs(3600),
        ..ProbeSpec::default()
    };
    let qp = QueueProxy::start(cfg(app.addr, once)).await.unwrap();
    wait_ready(&qp, true).await;
    let c = client();
    for _ in 0..20 {
        let (status, _) = text(c.request(get(qp.addr(), "/")).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(qp.in_flight(), 0);
    // Readiness probes (one, or a few on a loaded machine) open their own connections;
    // the 20 proxied requests share one.
    let conns = app.conns.load(Ordering::SeqCst);
    assert!(conns <= 4, "{conns} connections for 20 sequential requests");
}

#[tokio::test]
async fn drain_waits_for_a_slow_request_then_stops_accepting() {
    let app = App::start(false).await;
    let qp = Arc::new(
        QueueProxy::start(cfg(app.addr, ProbeSpec::default()))
            .await
            .unwrap(),
    );
    wait_ready(&qp, true).await;
    let addr = qp.addr();
    let slow = tokio::spawn(async move {
        text(client().request(get(addr, "/slow?ms=700")).await.unwrap()).await
    });
    wait_until("the slow request in flight", || qp.in_flight() == 1).await;

    let drain = tokio::spawn({
        let qp = qp.clone();
        async move { qp.drain(Duration::from_secs(10)).await }
    });
    wait_until("drain to begin", || qp.is_draining()).await;
    let (status, body) = probe(&qp, "queue").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("shutting down"));
    assert!(
        !drain.is_finished(),
        "drain returned with a request in flight"
    );

    assert_eq!(slow.await.unwrap(), (StatusCode::OK, "slept".to_string()));
    tokio::time::timeout(BOUND, drain).await.unwrap().unwrap();
    assert_eq!(qp.in_flight(), 0);
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(refused.is_err(), "still accepting after drain");
}

#[tokio::test]
async fn drain_is_bounded_by_its_timeout() {
    let app = App::start(false).await;
    let qp = QueueProxy::start(cfg(app.addr, ProbeSpec::default()))
        .await
        .unwrap();
    let addr = qp.addr();
    let slow = tokio::spawn(async move { client().request(get(addr, "/slow?ms=60000")).await });
    wait_until("the slow request in flight", || qp.in_flight() == 1).await;
    let started = std::time::Instant::now();
    qp.drain(Duration::from_millis(200)).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    // The request that outlived the drain was cut off, not left hanging.
    let res = tokio::time::timeout(BOUND, slow).await.unwrap().unwrap();
    assert!(res.is_err(), "a cut-off request must fail, got {res:?}");
}

#[tokio::test]
async fn local_handle_serves_in_process_until_stopped() {
    let app = App::start(false).await;
    let qp = QueueProxy::start(cfg(app.addr, ProbeSpec::default()))
        .await
        .unwrap();
    wait_ready(&qp, true).await;
    let local = rouse_queue::LocalQueue::lookup(qp.addr()).expect("registered while serving");
    assert!(*local.ready().borrow());

    let req = Request::get("/headers")
        .header("Host", "activator.internal")
        .header("K-Original-Host", "hello.default.example.com")
        .header("K-Proxy-Request", "activator")
        .body(full(""))
        .unwrap();
    let resp = local.handle(req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let headers = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(
        headers.contains("host: hello.default.example.com\n"),
        "{headers}"
    );
    assert!(!headers.contains("k-proxy-request"), "{headers}");
    // Counted like a request that came over TCP (marked as the activator's).
    let stats = qp.take_stats();
    assert_eq!(stats.proxied_request_count, 1.0, "{stats:?}");

    // Health checks answer the same way.
    let probe = Request::get("/")
        .header("K-Network-Probe", "queue")
        .body(full(""))
        .unwrap();
    let resp = local.handle(probe).await;
    assert_eq!(resp.status(), StatusCode::OK);

    // Once stopped by a drain, callers go over TCP (and find it closed).
    qp.drain(Duration::from_millis(10)).await;
    assert!(rouse_queue::LocalQueue::lookup(qp.addr()).is_none());
    let addr = qp.addr();
    drop(qp);
    assert!(rouse_queue::LocalQueue::lookup(addr).is_none());
}

#[tokio::test]
async fn a_request_body_in_pieces_is_received_then_forwarded_whole() {
    let app = App::start(false).await;
    let qp = QueueProxy::start(cfg(app.addr, ProbeSpec::default()))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    let req = Request::post(format!("http://{}/echo", qp.addr()))
        .body(channel_body(rx))
        .unwrap();
    let c = client();
    let pending = tokio::spawn(async move { c.request(req).await });
    for piece in ["ping-1", " ping-2", " ping-3"] {
        tx.send(Bytes::from(piece)).await.unwrap();
    }
    drop(tx);
    let resp = tokio::time::timeout(BOUND, pending)
        .await
        .expect("response")
        .unwrap()
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "ping-1 ping-2 ping-3");
    wait_until("in-flight back to 0", || qp.in_flight() == 0).await;
}

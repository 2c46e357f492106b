//! The engine's own HTTP/2 server (h2c with prior knowledge) through real sockets and hyper's
//! HTTP/2 client: many streams on one connection, a large body both ways under flow control,
//! trailers, a stream the client resets, the response head's `date` and `content-length`, and
//! a graceful shutdown that lets the stream in progress finish. HTTP/1.1 on the same listener
//! still goes to hyper's server.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{BOUND, exchange, wait_until};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::client::conn::http2::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rouse_http::{Body, ServerLimits, boxed, empty, full, serve_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};

/// Counts while alive: how many requests the service is still working on.
struct Working(Arc<AtomicUsize>);

impl Working {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Working(count.clone())
    }
}

impl Drop for Working {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct App {
    addr: SocketAddr,
    /// Requests to `/hang` the service still holds.
    hanging: Arc<AtomicUsize>,
    /// Lets `/slow` answer.
    release: Arc<Notify>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

/// A server loop with a small app: `/echo` streams the request body (and its trailers) back;
/// `/hang` never answers; `/slow` answers `done` once released; anything else answers its
/// path.
async fn app() -> App {
    app_with(ServerLimits::default()).await
}

async fn app_with(limits: ServerLimits) -> App {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hanging = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let (h, r) = (hanging.clone(), release.clone());
    let make = move |_remote| {
        let (h, r) = (h.clone(), r.clone());
        service_fn(move |req: Request<Body>| {
            let (h, r) = (h.clone(), r.clone());
            async move {
                let resp = match req.uri().path() {
                    "/echo" => Response::new(req.into_body()),
                    "/hang" => {
                        let _working = Working::new(&h);
                        std::future::pending::<()>().await;
                        unreachable!()
                    }
                    "/slow" => {
                        r.notified().await;
                        Response::new(full("done"))
                    }
                    path => Response::new(full(path.to_string())),
                };
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let done = tokio::spawn(serve_with(listener, make, shutdown, limits));
    App {
        addr,
        hanging,
        release,
        stop: Some(stop),
        done,
    }
}

async fn h2c(addr: SocketAddr) -> SendRequest<Body> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(64 * 1024)
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

fn get(addr: SocketAddr, path: &str) -> Request<Body> {
    Request::get(format!("http://{addr}{path}"))
        .body(empty())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_gets_its_answer_with_date_and_length() {
    let app = app().await;
    let mut send = h2c(app.addr).await;
    let resp = send.send_request(get(app.addr, "/hello")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert!(resp.headers().contains_key(http::header::DATE));
    assert_eq!(resp.headers()[http::header::CONTENT_LENGTH], "6");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "/hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_on_one_connection_each_get_their_own_answer() {
    let app = app().await;
    let send = h2c(app.addr).await;
    let mut asked = tokio::task::JoinSet::new();
    for i in 0..150 {
        let mut send = send.clone();
        let req = get(app.addr, &format!("/n{i}"));
        asked.spawn(async move {
            send.ready().await.unwrap();
            let resp = send.send_request(req).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (i, body)
        });
    }
    let mut answered = 0;
    while let Some(res) = asked.join_next().await {
        let (i, body) = res.unwrap();
        assert_eq!(body, format!("/n{i}"));
        answered += 1;
    }
    assert_eq!(answered, 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_streams_both_ways_under_flow_control() {
    let app = app().await;
    let mut send = h2c(app.addr).await;
    // Far past both sides' windows (64 KB here, 1 MB on the server): only flow control lets
    // it through.
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let chunks = 80;
    let frames = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
    );
    let req = Request::post(format!("http://{}/echo", app.addr))
        .body(boxed(StreamBody::new(frames)))
        .unwrap();
    let resp = tokio::time::timeout(BOUND, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = tokio::time::timeout(BOUND, resp.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(body.len(), chunks * 64 * 1024);
    assert!(body.iter().all(|b| *b == b'x'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_are_carried_through() {
    let app = app().await;
    let mut send = h2c(app.addr).await;
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = futures_util::stream::iter([
        Ok::<_, Infallible>(Frame::data(Bytes::from("payload"))),
        Ok(Frame::trailers(trailers)),
    ]);
    let req = Request::post(format!("http://{}/echo", app.addr))
        .body(boxed(StreamBody::new(frames)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers came back");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), "payload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_client_resets_drops_its_request_and_the_connection_serves_on() {
    let app = app().await;
    let mut send = h2c(app.addr).await;
    let asked = tokio::spawn({
        let mut send = send.clone();
        let req = get(app.addr, "/hang");
        async move { send.send_request(req).await }
    });
    let hanging = app.hanging.clone();
    wait_until("the request reaches the service", || {
        hanging.load(Ordering::SeqCst) == 1
    })
    .await;
    // Dropping the response future resets the stream (RST_STREAM CANCEL).
    asked.abort();
    wait_until("the reset stream's request is dropped", || {
        hanging.load(Ordering::SeqCst) == 0
    })
    .await;
    let resp = send.send_request(get(app.addr, "/after")).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "/after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_lets_the_stream_in_progress_finish_and_refuses_new_ones() {
    let mut app = app().await;
    let mut send = h2c(app.addr).await;
    let in_progress = tokio::spawn({
        let mut send = send.clone();
        let req = get(app.addr, "/slow");
        async move {
            let resp = send.send_request(req).await.unwrap();
            resp.into_body().collect().await.unwrap().to_bytes()
        }
    });
    // Make sure the slow stream is open on the server before the shutdown.
    let resp = send.send_request(get(app.addr, "/first")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    app.stop.take().unwrap().send(()).unwrap();
    // GOAWAY: a new stream is refused (or the connection is closing).
    let refused = tokio::time::timeout(BOUND, async {
        loop {
            match send.send_request(get(app.addr, "/late")).await {
                Err(_) => return,
                Ok(_) => tokio::task::yield_now().await,
            }
        }
    })
    .await;
    assert!(
        refused.is_ok(),
        "new streams kept being served after GOAWAY"
    );
    assert!(
        !app.done.is_finished(),
        "the server quit with a stream in progress"
    );
    app.release.notify_one();
    let body = tokio::time::timeout(BOUND, in_progress)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body, "done");
    tokio::time::timeout(BOUND, app.done)
        .await
        .expect("the server finished after its last stream")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_on_the_same_listener_still_works() {
    let app = app().await;
    let answer = exchange(
        app.addr,
        b"GET /plain HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("/plain"), "{answer}");
    // A head shorter than the HTTP/2 preface, on its own, is answered too.
    let answer = exchange(app.addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_midway_through_the_preface_is_let_go() {
    let app = app().await;
    let mut tcp = TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(BOUND, tcp.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the server held a half-sent preface open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_leaves_nothing_behind() {
    let app = app().await;
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let (mut flood, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    // Streams opened and reset at once, as fast as the client can (CVE-2023-44487's shape).
    // The server may call it abuse and close the connection: that ends the flood early.
    for _ in 0..2000 {
        let Ok(ready) = flood.ready().await else {
            break;
        };
        flood = ready;
        let req = Request::get(format!("http://{}/hang", app.addr))
            .body(())
            .unwrap();
        let Ok((_resp, mut stream)) = flood.send_request(req, false) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
    }
    // Every request the flood started is dropped...
    let hanging = app.hanging.clone();
    wait_until("the reset streams' requests are dropped", || {
        hanging.load(Ordering::SeqCst) == 0
    })
    .await;
    // ...and others are served meanwhile.
    let mut send = h2c(app.addr).await;
    let resp = send.send_request(get(app.addr, "/ok")).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "/ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_pings_that_are_answered_keep_the_connection() {
    let app = app_with(ServerLimits {
        h2_keep_alive_interval: Some(Duration::from_millis(20)),
        ..ServerLimits::default()
    })
    .await;
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    let mut conn = Box::pin(conn);
    let mut pings = conn.ping_pong().expect("the client's ping handle");
    // The client's connection task answers the server's pings while it runs; meanwhile this
    // client's own ping round-trips show the connection alive, through many of the server's
    // intervals.
    let driven = tokio::spawn(conn);
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(300) {
        tokio::time::timeout(BOUND, pings.ping(h2::Ping::opaque()))
            .await
            .expect("the server stopped answering")
            .expect("the connection closed");
    }
    assert!(!driven.is_finished(), "the server closed a live connection");
    let req = Request::get(format!("http://{}/alive", app.addr))
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(BOUND, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

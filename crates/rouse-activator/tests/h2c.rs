//! h2c revisions through the activator, with real sockets: requests handed to
//! [`Activator::handle`] go over HTTP/2 cleartext to a real queue-proxy (h2c) in front of an
//! HTTP/2-only app, keeping trailers and streaming both ways at once, from a cold start.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rouse_activator::{Activator, ActivatorConfig, RevisionParams};
use rouse_http::{Body, boxed, empty, full};
use rouse_queue::{QueueConfig, QueueProxy};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use support::{BOUND, HOST, NS, wait_until};

const REV: &str = "h-00001";

/// An HTTP/2-only app: `/trailers` answers `done` with trailers `grpc-status: 0` and the
/// request's protocol in `x-version`; `/echo` streams the request body back as it arrives.
async fn h2_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service_fn(app))
                    .await;
            });
        }
    });
    addr
}

async fn app(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let version = format!("{:?}", req.version());
    if req.uri().path() == "/echo" {
        return Ok(Response::new(boxed(req.into_body())));
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = futures_util::stream::iter([
        Ok::<_, Infallible>(Frame::data(Bytes::from("done"))),
        Ok(Frame::trailers(trailers)),
    ]);
    let mut resp = Response::new(boxed(StreamBody::new(frames)));
    resp.headers_mut()
        .insert("x-version", HeaderValue::from_str(&version).unwrap());
    Ok(resp)
}

fn post(path: &str, body: Body) -> Request<Body> {
    Request::post(path).header("host", HOST).body(body).unwrap()
}

/// The data and the trailers of a response.
async fn read_all(resp: Response<Body>) -> (String, Option<HeaderMap>) {
    let collected = tokio::time::timeout(BOUND, resp.into_body().collect())
        .await
        .expect("the body in time")
        .expect("the body streams without error");
    let trailers = collected.trailers().cloned();
    let data = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
    (data, trailers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_revision_keeps_trailers_and_duplex_streams_from_a_cold_start() {
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
        REV,
        RevisionParams {
            h2c: true,
            ..RevisionParams::default()
        },
    );

    // At zero: the request waits, the revision is poked once.
    let a = act.clone();
    let waiting = tokio::spawn(async move { a.handle(NS, REV, post("/trailers", empty())).await });
    wait_until("the request waits", || act.waiting(NS, REV) == 1).await;
    assert_eq!(pokes.load(Ordering::SeqCst), 1);

    // The instance comes up: the activator probes it (its usual probe) and releases the call.
    let qp = QueueProxy::start(QueueConfig {
        h2c: true,
        ..QueueConfig::new(h2_app().await, NS, REV)
    })
    .await
    .unwrap();
    act.set_backends(NS, REV, vec![qp.addr()]);
    let resp = tokio::time::timeout(BOUND, waiting).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().contains_key("k-cold-start"));
    assert_eq!(resp.headers()["x-version"], "HTTP/2.0");
    let (data, trailers) = read_all(resp).await;
    assert_eq!(data, "done");
    let trailers = trailers.expect("the app's trailers reach the caller");
    assert_eq!(trailers["grpc-status"], "0");

    // Warm: a duplex stream; each chunk comes back before the next is sent.
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    }));
    tx.send(Bytes::from("one")).await.unwrap();
    let resp = tokio::time::timeout(BOUND, act.handle(NS, REV, post("/echo", boxed(body))))
        .await
        .expect("the response head in time");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(!resp.headers().contains_key("k-cold-start"));
    let mut body = resp.into_body();
    for (want, next) in [("one", "two"), ("two", "three"), ("three", "")] {
        let got = tokio::time::timeout(BOUND, body.frame())
            .await
            .expect("an echo in time")
            .expect("a frame")
            .expect("no error")
            .into_data()
            .unwrap();
        assert_eq!(got, want);
        if next.is_empty() {
            break;
        }
        tx.send(Bytes::from(next)).await.unwrap();
    }
    drop(tx);
    let end = tokio::time::timeout(BOUND, body.collect())
        .await
        .expect("the stream ends when the client's side does")
        .unwrap();
    assert!(end.to_bytes().is_empty());
    wait_until("nothing in flight", || qp.in_flight() == 0).await;
    assert_eq!(pokes.load(Ordering::SeqCst), 1);

    // A plain HTTP/1.1 caller's request is carried over h2c as well.
    let req = Request::get("/trailers")
        .version(Version::HTTP_11)
        .header("host", HOST)
        .body(full(""))
        .unwrap();
    let resp = act.handle(NS, REV, req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(read_all(resp).await.0, "done");
}

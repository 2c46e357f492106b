//! Protocol upgrades (WebSocket's mechanism) through the activator, with real sockets: a
//! hyper front server hands requests to the activator, which forwards them to a real
//! queue-proxy in front of an app that switches to a byte-echo protocol.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rouse_activator::{Activator, ActivatorConfig, RevisionParams};
use rouse_http::{Body, boxed, full, serve};
use rouse_queue::{InFlight, QueueConfig, QueueProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use support::{BOUND, NS, get, read, wait_until};

const REV: &str = "u-00001";

/// An app that switches requests asking for `Upgrade: echo` to a protocol echoing every
/// byte, and answers anything else with `plain`.
async fn echo_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service_fn(echo))
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

async fn echo(mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if req
        .headers()
        .get(header::UPGRADE)
        .is_none_or(|v| v != "echo")
    {
        return Ok(Response::new(full("plain")));
    }
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(up) = on.await else { return };
        let mut io = TokioIo::new(up);
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = io.read(&mut buf).await {
            if io.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::new(full(""));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert(header::UPGRADE, "echo".parse().unwrap());
    resp.headers_mut()
        .insert(header::CONNECTION, "upgrade".parse().unwrap());
    Ok(resp)
}

/// A ready queue-proxy in front of the echo app.
async fn instance() -> QueueProxy {
    let qp = QueueProxy::start(QueueConfig::new(echo_app().await, NS, REV))
        .await
        .unwrap();
    let mut ready = qp.ready();
    tokio::time::timeout(BOUND, ready.wait_for(|r| *r))
        .await
        .unwrap()
        .unwrap();
    qp
}

/// A front server handing every request to the activator for [`REV`], holding a count of
/// its requests in flight (as the gateway does).
async fn front(act: Arc<Activator>) -> (SocketAddr, InFlight) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let in_flight = InFlight::new();
    let counted = in_flight.clone();
    let make = move |_remote| {
        let (act, counted) = (act.clone(), counted.clone());
        service_fn(move |req: Request<Incoming>| {
            let (act, guard) = (act.clone(), counted.start());
            async move {
                let resp = act.handle_holding(NS, REV, req.map(boxed), guard).await;
                Ok::<_, Infallible>(resp)
            }
        })
    };
    tokio::spawn(serve(listener, make, std::future::pending()));
    (addr, in_flight)
}

fn params(cc: u32, timeout: Duration) -> RevisionParams {
    RevisionParams {
        container_concurrency: cc,
        timeout,
        response_start_timeout: None,
        h2c: false,
        request_body_buffer: rouse_http::DEFAULT_REQUEST_BODY_BUFFER,
    }
}

/// Asks `addr` to switch to the echo protocol; returns the stream and the response head.
async fn open(addr: SocketAddr) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"GET /up HTTP/1.1\r\nHost: u.example\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
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

async fn round_trip(tcp: &mut TcpStream, msg: &[u8]) {
    tcp.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(BOUND, tcp.read_exact(&mut got))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(got, msg);
}

async fn plain_get(addr: SocketAddr) -> (StatusCode, String) {
    let c: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::get(format!("http://{addr}/"))
        .body(Full::default())
        .unwrap();
    let resp = c.request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_upgrade_holds_its_slot_and_counts_until_it_closes() {
    let act = Activator::new(ActivatorConfig::default(), Arc::new(|_: &str, _: &str| {}));
    act.set_revision(NS, REV, params(1, Duration::ZERO));
    let qp = instance().await;
    act.set_backends(NS, REV, vec![qp.addr()]);
    wait_until("probed", || act.ready_backends(NS, REV).len() == 1).await;
    let (addr, in_flight) = front(act.clone()).await;

    let (mut tcp, head) = open(addr).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: echo"),
        "{head}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("k-cold-start"),
        "{head}"
    );
    round_trip(&mut tcp, b"ping").await;
    assert_eq!(
        in_flight.get(),
        1,
        "the front's guard lives with the connection"
    );

    // containerConcurrency 1: a plain request waits for the socket's slot.
    let plain = tokio::spawn(plain_get(addr));
    wait_until("the plain request waits", || act.waiting(NS, REV) == 1).await;
    act.take_stats();
    round_trip(&mut tcp, b"still open").await;
    let stat = act.take_stats().pop().expect("load while open");
    // The socket (1) plus the waiting request (1) for the whole period.
    assert!((stat.average_concurrency - 2.0).abs() < 1e-6, "{stat:?}");

    drop(tcp);
    let (status, body) = tokio::time::timeout(BOUND, plain).await.unwrap().unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "plain"));
    wait_until("nothing held", || in_flight.get() == 0).await;
    wait_until("no load reported", || act.take_stats().is_empty()).await;
    let m = act.metrics_text();
    assert!(
        m.contains("rouse_activator_requests_total{namespace=\"default\",revision=\"u-00001\",code=\"101\"} 1\n"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switched_connection_outlives_the_revision_timeout() {
    let act = Activator::new(ActivatorConfig::default(), Arc::new(|_: &str, _: &str| {}));
    let timeout = Duration::from_millis(400);
    act.set_revision(NS, REV, params(0, timeout));
    let (addr, in_flight) = front(act.clone()).await;
    // At zero: the handshake waits, part of its budget spent, until an instance appears.
    let start = Instant::now();
    let opening = tokio::spawn(open(addr));
    wait_until("the handshake waits", || act.waiting(NS, REV) == 1).await;
    let qp = instance().await;
    act.set_backends(NS, REV, vec![qp.addr()]);
    let (mut tcp, head) = tokio::time::timeout(BOUND, opening).await.unwrap().unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("k-cold-start"), "{head}");
    round_trip(&mut tcp, b"ping").await;
    // Let the revision timeout pass: it stopped applying at the switch.
    tokio::time::sleep_until(start + timeout + Duration::from_millis(200)).await;
    round_trip(&mut tcp, b"still here").await;
    assert_eq!(in_flight.get(), 1);
    drop(tcp);
    wait_until("nothing held", || in_flight.get() == 0).await;
}

#[tokio::test(start_paused = true)]
async fn a_handshake_waiting_past_the_timeout_is_a_503() {
    let act = Activator::new(ActivatorConfig::default(), Arc::new(|_: &str, _: &str| {}));
    act.set_revision(NS, REV, params(0, Duration::from_secs(2)));
    let mut req = get("/ws");
    req.headers_mut()
        .insert(header::CONNECTION, "Upgrade".parse().unwrap());
    req.headers_mut()
        .insert(header::UPGRADE, "websocket".parse().unwrap());
    let start = Instant::now();
    let (status, body, _) = read(act.handle(NS, REV, req).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body.unwrap(),
        "activator request timeout: context deadline exceeded\n"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(act.waiting(NS, REV), 0);
}

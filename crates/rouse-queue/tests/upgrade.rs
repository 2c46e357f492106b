//! Protocol upgrades (the WebSocket handshake's mechanism) through a real queue-proxy: the
//! switched connection carries bytes both ways and counts as a request in flight until it
//! closes.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use common::{BOUND, fetch, wait_ready, wait_until};
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rouse_http::{Body, full};
use rouse_queue::{QueueConfig, QueueProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An app that switches `/echo-upgrade` requests asking for `Upgrade: echo` to a protocol
/// that echoes every byte, and answers anything else with `plain`.
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
    let wants = req.uri().path() == "/echo-upgrade"
        && req
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|v| v == "echo");
    if !wants {
        return Ok(Response::new(full("plain")));
    }
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(up) = on.await else { return };
        let mut io = TokioIo::new(up);
        let mut buf = [0u8; 1024];
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
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

async fn queue(cc: u32) -> QueueProxy {
    let app = echo_app().await;
    let qp = QueueProxy::start(QueueConfig {
        container_concurrency: cc,
        timeout: Some(Duration::from_millis(500)),
        ..QueueConfig::new(app, "default", "ws-00001")
    })
    .await
    .unwrap();
    wait_ready(&qp).await;
    qp
}

/// Opens an upgraded connection through `addr`; returns it and the response head.
async fn open(addr: SocketAddr, protocol: &str) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let handshake = format!(
        "GET /echo-upgrade HTTP/1.1\r\nHost: ws.example\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n"
    );
    tcp.write_all(handshake.as_bytes()).await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_is_carried_and_counted_until_it_closes() {
    let qp = queue(0).await;
    let (mut tcp, head) = open(qp.addr(), "echo").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: echo"), "{head}");
    assert!(lower.contains("connection: upgrade"), "{head}");
    round_trip(&mut tcp, b"ping").await;
    assert_eq!(qp.in_flight(), 1);
    qp.take_stats();
    // Outlive the revision timeout (500 ms): that limit stops at the switch.
    tokio::time::sleep(Duration::from_millis(700)).await;
    round_trip(&mut tcp, b"still here").await;
    assert!((qp.take_stats().average_concurrency - 1.0).abs() < 1e-9);
    drop(tcp);
    wait_until("the closed connection no longer counted", || {
        qp.in_flight() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_upgraded_connection_holds_its_concurrency_slot() {
    let qp = queue(1).await;
    let (mut tcp, head) = open(qp.addr(), "echo").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let addr = qp.addr();
    let plain = tokio::spawn(async move { fetch(addr, "/").await });
    wait_until("the plain request queued", || qp.queued() == 1).await;
    round_trip(&mut tcp, b"ping").await;
    drop(tcp);
    let (status, body) = tokio::time::timeout(BOUND, plain).await.unwrap().unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "plain"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_an_upgraded_connection_then_cuts_it() {
    let qp = queue(0).await;
    let (mut tcp, _) = open(qp.addr(), "echo").await;
    round_trip(&mut tcp, b"ping").await;
    qp.drain(Duration::from_millis(300)).await;
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(BOUND, tcp.read(&mut buf))
        .await
        .expect("the connection closes once drain is over");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    wait_until("nothing in flight", || qp.in_flight() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_declines_the_upgrade_answers_plainly() {
    let qp = queue(0).await;
    let (_tcp, head) = open(qp.addr(), "something-else").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    wait_until("the declined request done", || qp.in_flight() == 0).await;
}

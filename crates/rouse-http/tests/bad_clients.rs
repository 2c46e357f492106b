//! Bad clients against the engine's server loop, through raw sockets: slow and silent
//! senders, idle connections, stalled bodies, oversized HTTP/2 header lists. Each runs against
//! a bare `serve_with` with short limits (or the defaults on a paused clock). The queue-proxy's
//! tests (`crates/rouse-queue/tests/bad_clients.rs`) cover the same loop in front of an app.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{BOUND, exchange, read_to_close, read_to_close_within, read_until, wait_until};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rouse_http::{
    BODY_TIMEOUT_BODY, Body, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT, ProxyClient,
    ServerLimits, full, serve, serve_with,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A bare server loop with `limits` and a small app:
/// `/echo` streams the request body back as it arrives; `/proxy` forwards to `upstream`;
/// anything else answers `ok` without reading the body.
async fn bare(limits: ServerLimits, upstream: Option<SocketAddr>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let proxy = ProxyClient::http1();
    let make = move |_remote| {
        let proxy = proxy.clone();
        service_fn(move |req: Request<Body>| {
            let proxy = proxy.clone();
            async move {
                let resp = match req.uri().path() {
                    "/echo" => Response::new(req.into_body()),
                    "/proxy" => match proxy.forward(req, upstream.unwrap()).await {
                        Ok(resp) => resp.map(rouse_http::boxed),
                        Err(e) => e.to_response(),
                    },
                    _ => Response::new(full("ok")),
                };
                Ok::<_, Infallible>(resp)
            }
        })
    };
    tokio::spawn(serve_with(listener, make, std::future::pending(), limits));
    addr
}

/// An upstream that reads each request body whole and counts the bodies that broke off.
async fn body_reader() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let broken = Arc::new(AtomicUsize::new(0));
    let b = broken.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let b = b.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let b = b.clone();
                    async move {
                        let text = match req.into_body().collect().await {
                            Ok(body) => format!("got {} bytes", body.to_bytes().len()),
                            Err(_) => {
                                b.fetch_add(1, Ordering::SeqCst);
                                "broken".to_string()
                            }
                        };
                        Ok::<_, Infallible>(Response::new(full(text)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, broken)
}

fn short(header: u64, idle: u64, body: u64) -> ServerLimits {
    ServerLimits {
        header_read_timeout: Some(ms(header)),
        idle_timeout: Some(ms(idle)),
        body_read_timeout: Some(ms(body)),
        ..ServerLimits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_h2c_header_list_is_refused() {
    let addr = bare(ServerLimits::default(), None).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let big = "a".repeat(100 * 1024);
    let req = Request::get(format!("http://{addr}/"))
        .header("x-big", big)
        .body(full(""))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // A normal request on a fresh connection still works.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            Request::get(format!("http://{addr}/"))
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_silent_sender_is_cut_off_at_the_header_timeout() {
    let addr = bare(short(300, 10_000, 10_000), None).await;
    // Says nothing at all.
    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert_eq!(read_to_close(&mut silent).await, "");
    assert!(started.elapsed() >= ms(300), "{:?}", started.elapsed());
    // Starts a head and stops.
    let started = Instant::now();
    let answer = exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n").await;
    assert_eq!(answer, "", "no answer to a head that never completed");
    assert!(started.elapsed() >= ms(300));
    // Trickles a byte every 50 ms: the timeout counts from the first byte, not the last.
    let started = Instant::now();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut closed_after = None;
    for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    {
        if tcp.write_all(&[*b]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(ms(50)).await;
    }
    let closed_after = match closed_after {
        Some(t) => t,
        None => {
            assert_eq!(read_to_close(&mut tcp).await, "");
            started.elapsed()
        }
    };
    assert!(
        closed_after >= ms(300) && closed_after < ms(2400),
        "closed after {closed_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_is_closed_after_the_idle_timeout_only() {
    let addr = bare(short(5_000, 600, 10_000), None).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // Busy for well over the idle timeout, with gaps far shorter than it (so a loaded machine
    // cannot stretch one past it): stays open.
    let started = Instant::now();
    let mut last_sent = started;
    while started.elapsed() < ms(1800) {
        last_sent = Instant::now();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = read_until(&mut tcp, "ok").await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "got {answer:?}");
        tokio::time::sleep(ms(50)).await;
    }
    // Then idle: closed after the idle timeout (which starts after the last answer, so never
    // before the last request was sent), well before the 5 s header timeout.
    assert_eq!(read_to_close(&mut tcp).await, "");
    let after = last_sent.elapsed();
    assert!(
        after >= ms(600) && after < ms(4000),
        "closed after {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2c_connection_gets_a_goaway() {
    let addr = bare(short(5_000, 300, 10_000), None).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let (closed_tx, closed_rx) = oneshot::channel();
    tokio::spawn(async move {
        let _ = conn.await;
        let _ = closed_tx.send(Instant::now());
    });
    // The server's idle timer starts after its answer, so never before this instant: a lower
    // bound that holds however late this task runs.
    let asked = Instant::now();
    let resp = send
        .send_request(
            Request::get(format!("http://{addr}/"))
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();
    let closed = tokio::time::timeout(BOUND, closed_rx)
        .await
        .expect("the idle h2c connection stayed open")
        .unwrap();
    assert!(
        closed - asked >= ms(300),
        "closed after {:?}",
        closed - asked
    );
}

#[tokio::test(start_paused = true)]
async fn the_default_timers_on_a_paused_clock() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let make = |_remote| service_fn(|_req: Request<Body>| async { Ok(Response::new(full("ok"))) });
    tokio::spawn(serve(listener, make, std::future::pending()));
    // A silent connection goes at the header timeout.
    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let bound = DEFAULT_HEADER_READ_TIMEOUT * 3;
    assert_eq!(read_to_close_within(&mut silent, bound).await, "");
    let after = started.elapsed();
    assert!(
        after >= DEFAULT_HEADER_READ_TIMEOUT && after < DEFAULT_HEADER_READ_TIMEOUT + ms(1000),
        "closed after {after:?}"
    );
    // An idle keep-alive connection goes at the idle timeout, not the header timeout.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut tcp, "ok").await;
    let idle = Instant::now();
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(DEFAULT_IDLE_TIMEOUT * 2, tcp.read(&mut buf)).await;
    let after = idle.elapsed();
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    assert!(
        after >= DEFAULT_IDLE_TIMEOUT && after < DEFAULT_IDLE_TIMEOUT + ms(1000),
        "closed after {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_aborted_upstream_and_answered_408() {
    let (upstream, broken) = body_reader().await;
    let addr = bare(short(5_000, 10_000, 600), Some(upstream)).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    tcp.write_all(b"POST /proxy HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let answer = read_to_close(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "got {answer:?}");
    assert!(answer.contains(BODY_TIMEOUT_BODY), "got {answer:?}");
    assert!(started.elapsed() >= ms(600), "{:?}", started.elapsed());
    wait_until("the upstream to see the body break off", || {
        broken.load(Ordering::SeqCst) == 1
    })
    .await;
    // A body that keeps coming, however slowly, is not cut: 8 bytes over longer than the
    // timeout, with gaps far under it.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"POST /proxy HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for _ in 0..8 {
        tokio::time::sleep(ms(100)).await;
        tcp.write_all(b"x").await.unwrap();
    }
    let answer = read_to_close(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "got {answer:?}");
    assert!(answer.ends_with("got 8 bytes"), "got {answer:?}");
    assert_eq!(broken.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_h2c_stream_is_not_cut_by_the_body_read_timeout() {
    // Streaming RPCs have quiet client streams: HTTP/2 bodies are exempt from the body read
    // timeout (the revision timeouts bound them), and the connection keeps serving meanwhile.
    let (upstream, broken) = body_reader().await;
    let addr = bare(short(5_000, 10_000, 300), Some(upstream)).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(hyper::body::Frame::data(b)), rx))
    });
    tx.send(Bytes::from("0123456789")).await.unwrap();
    let req = Request::post(format!("http://{addr}/proxy"))
        .body(rouse_http::boxed(http_body_util::StreamBody::new(chunks)))
        .unwrap();
    let quiet = tokio::spawn(send.send_request(req));
    // Three times the body read timeout later, another stream on the connection is served...
    tokio::time::sleep(ms(900)).await;
    let resp = send
        .send_request(
            Request::get(format!("http://{addr}/"))
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // ...and the quiet stream is still open: nothing broke its body.
    assert!(!quiet.is_finished());
    assert_eq!(broken.load(Ordering::SeqCst), 0);
    drop(tx);
    let resp = tokio::time::timeout(BOUND, quiet)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_ne!(resp.status(), StatusCode::REQUEST_TIMEOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_stalling_after_the_response_started_breaks_the_response_off() {
    let addr = bare(short(5_000, 10_000, 300), None).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    tcp.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    let head = read_until(&mut tcp, "hello").await;
    assert!(head.starts_with("HTTP/1.1 200 "), "got {head:?}");
    let rest = read_to_close(&mut tcp).await;
    assert!(started.elapsed() >= ms(300), "{:?}", started.elapsed());
    assert!(
        !rest.contains("0\r\n\r\n"),
        "the response must be broken off, not ended: {rest:?}"
    );
}

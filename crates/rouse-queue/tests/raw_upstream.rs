//! Bodiless requests on the general path (here: over HTTP/2 to the queue-proxy) go to an
//! HTTP/1.1 app over raw keep-alive connections. A scripted app answers with every framing a
//! response can have, and the client must get each one whole: bodies of any length, chunked
//! with trailers, until the close, no body, after interim answers; broken answers get a 502.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::{BOUND, wait_ready};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rouse_http::{Body, empty};
use rouse_queue::{QueueConfig, QueueProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BIG: usize = 1 << 20;

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

/// A scripted HTTP/1.1 app. Its answers name the connection they came on (`X-Conn`, from 1
/// for the first connection, probes included); the count of connections is returned too.
async fn scripted_app() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let id = count.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(serve_scripted(tcp, id));
        }
    });
    (addr, accepted)
}

async fn serve_scripted(mut tcp: TcpStream, id: usize) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
        let is_head = head.starts_with("HEAD ");
        let keep = match path.as_str() {
            "/chunked" => {
                let body = format!(
                    "HTTP/1.1 200 OK\r\nX-Conn: {id}\r\nTransfer-Encoding: chunked\r\nTrailer: x-check\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-check: done\r\n\r\n"
                );
                // In pieces, so the decoder meets every boundary mid-read.
                for piece in body.as_bytes().chunks(7) {
                    if tcp.write_all(piece).await.is_err() {
                        return;
                    }
                }
                true
            }
            "/big" => {
                let head =
                    format!("HTTP/1.1 200 OK\r\nX-Conn: {id}\r\nContent-Length: {BIG}\r\n\r\n");
                let _ = tcp.write_all(head.as_bytes()).await;
                let body = if is_head { Vec::new() } else { pattern(BIG) };
                for piece in body.chunks(100_000) {
                    if tcp.write_all(piece).await.is_err() {
                        return;
                    }
                }
                true
            }
            "/close" => {
                let _ = tcp
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the close",
                    )
                    .await;
                false
            }
            "/interim" => {
                let _ = tcp
                    .write_all(format!("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nX-Kept: yes\r\nX-Conn: {id}\r\n\r\nafter").as_bytes())
                    .await;
                true
            }
            "/empty" => {
                let reply = format!("HTTP/1.1 204 No Content\r\nX-Conn: {id}\r\n\r\n");
                let _ = tcp.write_all(reply.as_bytes()).await;
                true
            }
            "/bad" => {
                let _ = tcp.write_all(b"not http at all\r\n\r\n").await;
                false
            }
            _ => {
                // Echoes what it was sent, head only.
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nX-Conn: {id}\r\nContent-Length: {}\r\n\r\n{head}",
                    head.len()
                );
                let _ = tcp.write_all(reply.as_bytes()).await;
                true
            }
        };
        if !keep {
            return;
        }
    }
}

async fn queue_for(app: SocketAddr) -> QueueProxy {
    let qp = QueueProxy::start(QueueConfig::new(app, "default", "raw-00001"))
        .await
        .unwrap();
    wait_ready(&qp).await;
    qp
}

async fn h2(addr: SocketAddr) -> SendRequest<Body> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

fn conn_of(got: &Got) -> String {
    got.headers
        .get("x-conn")
        .expect("the app names its connection")
        .to_str()
        .unwrap()
        .to_string()
}

struct Got {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
    trailers: Option<http::HeaderMap>,
}

async fn call(send: &mut SendRequest<Body>, method: Method, path: &str) -> Got {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://raw.example.com{path}"))
        .header("x-from-client", "1")
        .body(empty())
        .unwrap();
    let resp = tokio::time::timeout(BOUND, send.send_request(req))
        .await
        .expect("no answer in time")
        .unwrap();
    let (parts, body) = resp.into_parts();
    let collected = tokio::time::timeout(BOUND, body.collect())
        .await
        .expect("no body in time")
        .unwrap();
    Got {
        status: parts.status,
        headers: parts.headers,
        trailers: collected.trailers().cloned(),
        body: collected.to_bytes(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_framing_arrives_whole_over_http2() {
    let (app, accepted) = scripted_app().await;
    let qp = queue_for(app).await;
    let mut send = h2(qp.addr()).await;

    // The request head the app got: Host from the HTTP/2 authority, headers kept.
    let got = call(&mut send, Method::GET, "/echo?q=1").await;
    assert_eq!(got.status, StatusCode::OK);
    let first = conn_of(&got);
    let mut conns = vec![];
    let seen = String::from_utf8_lossy(&got.body).to_ascii_lowercase();
    assert!(seen.starts_with("get /echo?q=1 http/1.1\r\n"), "{seen}");
    assert!(seen.contains("host: raw.example.com\r\n"), "{seen}");
    assert!(seen.contains("x-from-client: 1\r\n"), "{seen}");

    let got = call(&mut send, Method::GET, "/chunked").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(&got.body[..], b"hello world");
    conns.push(conn_of(&got));
    let trailers = got.trailers.expect("the trailer arrives");
    assert_eq!(trailers.get("x-check").unwrap(), "done");
    assert!(got.headers.get("transfer-encoding").is_none());

    let got = call(&mut send, Method::GET, "/big").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body.len(), BIG);
    assert!(got.body[..] == pattern(BIG)[..], "the body is intact");
    conns.push(conn_of(&got));

    let got = call(&mut send, Method::GET, "/interim").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(&got.body[..], b"after");
    assert_eq!(got.headers.get("x-kept").unwrap(), "yes");
    conns.push(conn_of(&got));
    assert!(
        got.headers.get("connection").is_none(),
        "hop-by-hop dropped"
    );

    let got = call(&mut send, Method::GET, "/empty").await;
    assert_eq!(got.status, StatusCode::NO_CONTENT);
    assert!(got.body.is_empty());
    conns.push(conn_of(&got));

    let got = call(&mut send, Method::HEAD, "/big").await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body.is_empty());
    conns.push(conn_of(&got));

    // All of the above, one after another, on one kept-alive app connection.
    assert!(conns.iter().all(|c| *c == first), "{first} then {conns:?}");

    // A body that runs to the close: whole, and that connection is not reused.
    let before = accepted.load(Ordering::SeqCst);
    let got = call(&mut send, Method::GET, "/close").await;
    assert_eq!(&got.body[..], b"until the close");
    let got = call(&mut send, Method::GET, "/chunked").await;
    assert_eq!(&got.body[..], b"hello world");
    assert_ne!(conn_of(&got), first);
    assert!(accepted.load(Ordering::SeqCst) > before);

    // An answer that is not HTTP: 502, and the queue-proxy goes on.
    let got = call(&mut send, Method::GET, "/bad").await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    let got = call(&mut send, Method::GET, "/chunked").await;
    assert_eq!(&got.body[..], b"hello world");
    assert_eq!(qp.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_in_parallel_each_get_their_own_answer() {
    let (app, _) = scripted_app().await;
    let qp = queue_for(app).await;
    let send = h2(qp.addr()).await;
    let mut calls = Vec::new();
    for i in 0..32 {
        let mut send = send.clone();
        calls.push(tokio::spawn(async move {
            let path = if i % 2 == 0 {
                format!("/echo/{i}")
            } else {
                "/chunked".into()
            };
            (i, call(&mut send, Method::GET, &path).await)
        }));
    }
    for c in calls {
        let (i, got) = c.await.unwrap();
        assert_eq!(got.status, StatusCode::OK);
        if i % 2 == 0 {
            let seen = String::from_utf8_lossy(&got.body).into_owned();
            assert!(seen.starts_with(&format!("GET /echo/{i} ")), "{seen}");
        } else {
            assert_eq!(&got.body[..], b"hello world");
        }
    }
    assert_eq!(qp.in_flight(), 0);
}

/// Reads one response with a `Content-Length` off `tcp`: its head and body.
async fn read_response(tcp: &mut TcpStream) -> (String, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    tokio::time::timeout(BOUND, async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end + 4]).into_owned();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .expect("a Content-Length")
                    .parse()
                    .unwrap();
                if got.len() >= end + 4 + len {
                    return (head, got[end + 4..end + 4 + len].to_vec());
                }
            }
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed mid-response: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("no whole response in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_app_connection_whose_buffer_was_freed_serves_on() {
    let (app, _) = scripted_app().await;
    let qp = queue_for(app).await;
    let mut tcp = TcpStream::connect(qp.addr()).await.unwrap();
    let mut call = async |path: &str| {
        let req = format!("GET {path} HTTP/1.1\r\nHost: raw.example.com\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut tcp).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        // The app's own header spelling: the fast path relayed its head.
        let conn = head.lines().find_map(|l| l.strip_prefix("X-Conn: "));
        (conn.expect("the fast path").to_string(), body)
    };
    let (first, body) = call("/one").await;
    assert!(body.starts_with(b"GET /one HTTP/1.1\r\n"));
    // What the idle shed does: the pooled connection stays, its read buffer goes.
    qp.release_idle_buffers();
    let (again, body) = call("/two").await;
    assert_eq!(again, first, "the pooled app connection was not reused");
    assert!(body.starts_with(b"GET /two HTTP/1.1\r\n"));
    qp.release_idle_buffers();
    let (again, body) = call("/big").await;
    assert_eq!(again, first);
    assert_eq!(body, pattern(BIG));
}

//! Bad clients against a real queue-proxy in front of a tiny app, through raw sockets:
//! malformed and oversized requests, clients that hang up, and that none of it holds up anyone
//! else. The server loop's timers are the engine's tests (`crates/rouse-http/tests`).

mod common;

use bytes::Bytes;
use common::{
    App, BOUND, client, exchange, fetch, get, read_to_close, read_until, wait_ready, wait_until,
};
use http::StatusCode;
use http_body_util::BodyExt;
use rouse_queue::{QueueConfig, QueueProxy};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

fn ms(n: u64) -> std::time::Duration {
    std::time::Duration::from_millis(n)
}

async fn queue(app: &App, cc: u32) -> QueueProxy {
    let qp = QueueProxy::start(QueueConfig {
        container_concurrency: cc,
        ..QueueConfig::new(app.addr, "default", "bad-00001")
    })
    .await
    .unwrap();
    wait_ready(&qp).await;
    qp
}

fn big_header_request(size: usize) -> Vec<u8> {
    let mut req = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', size));
    req.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_the_queue_proxy_keeps_serving() {
    let app = App::start().await;
    let qp = queue(&app, 0).await;
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nNot a header\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n",
    ] {
        let answer = exchange(qp.addr(), bad).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 "),
            "{:?} got {answer:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(app.seen(), 0, "nothing malformed reached the app");
    assert_eq!(
        fetch(qp.addr(), "/").await,
        (StatusCode::OK, "hello".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_head_gets_431_and_a_large_one_under_the_limit_passes() {
    let app = App::start().await;
    let qp = queue(&app, 0).await;
    let answer = exchange(qp.addr(), &big_header_request(100 * 1024)).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "got {answer:?}");
    // A client that sends far more than the limit before it reads still gets the answer: the
    // server reads and discards the rest instead of resetting the connection.
    let mut tcp = TcpStream::connect(qp.addr()).await.unwrap();
    let _ = tcp.write_all(&big_header_request(900 * 1024)).await;
    let answer = read_to_close(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "got {answer:?}");
    // Too many header fields is the same answer.
    let mut many = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..150 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let answer = exchange(qp.addr(), &many).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "got {answer:?}");
    assert_eq!(app.seen(), 0);
    // 60 KiB of headers is within the 64 KiB limit and goes through to the app.
    let answer = exchange(qp.addr(), &big_header_request(60 * 1024)).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "got {answer:?}");
    assert!(answer.ends_with("hello"), "got {answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_while_queued_releases_its_place_and_its_count_at_once() {
    let app = App::start().await;
    let qp = queue(&app, 1).await;
    let addr = qp.addr();
    let holder = tokio::spawn(async move { fetch(addr, "/hold").await });
    wait_until("one request in the app", || app.current() == 1).await;
    let mut quitters = Vec::new();
    for _ in 0..5 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        // A whole (small) body: bodies are received before the request queues for a slot.
        tcp.write_all(b"POST /hold HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789")
            .await
            .unwrap();
        quitters.push(tcp);
    }
    wait_until("five queued", || qp.queued() == 5).await;
    assert_eq!(qp.in_flight(), 6);
    drop(quitters);
    wait_until("the queue to empty", || qp.queued() == 0).await;
    wait_until("only the held request in flight", || qp.in_flight() == 1).await;
    app.release(1);
    let got = tokio::time::timeout(BOUND, holder).await.unwrap().unwrap();
    assert_eq!(got, (StatusCode::OK, "held".to_string()));
    wait_until("nothing in flight", || qp.in_flight() == 0).await;
    assert_eq!(app.seen(), 1, "no hung-up request reached the app");
    assert_eq!(fetch(addr, "/").await, (StatusCode::OK, "hello".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_while_its_response_streams_releases_its_slot_at_once() {
    let app = App::start().await;
    let qp = queue(&app, 1).await;
    let mut tcp = TcpStream::connect(qp.addr()).await.unwrap();
    tcp.write_all(b"GET /drip?n=10000&every=20 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut tcp, "1\n").await;
    assert_eq!(qp.in_flight(), 1);
    drop(tcp);
    wait_until("the streaming request to be released", || {
        qp.in_flight() == 0
    })
    .await;
    // Its concurrency slot is free: the next request is answered, not queued behind it.
    let got = tokio::time::timeout(BOUND, fetch(qp.addr(), "/"))
        .await
        .unwrap();
    assert_eq!(got, (StatusCode::OK, "hello".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_stalled_clients_do_not_hold_up_others() {
    let app = App::start().await;
    let qp = queue(&app, 0).await;
    let addr = qp.addr();
    // Fifty connections misbehaving at once, kept open throughout.
    let mut stalled = Vec::new();
    let kinds: [&[u8]; 5] = [
        b"",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: a",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789",
        b"PRI * HTTP/2.0\r\n",
        b"GET /",
    ];
    for i in 0..50 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(kinds[i % kinds.len()]).await.unwrap();
        stalled.push(tcp);
    }
    // Garbage and oversized heads keep arriving meanwhile.
    let noise = tokio::spawn(async move {
        for i in 0..20 {
            let bad = if i % 2 == 0 {
                b"GARBAGE\r\n\r\n".to_vec()
            } else {
                big_header_request(100 * 1024)
            };
            exchange(addr, &bad).await;
        }
    });
    let started = Instant::now();
    let mut ok = JoinSet::new();
    for _ in 0..10 {
        ok.spawn(async move {
            let c = client();
            for _ in 0..10 {
                let resp = tokio::time::timeout(ms(2000), c.request(get(addr, "/")))
                    .await
                    .expect("a healthy request was held up")
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::OK);
                let body: Bytes = resp.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body, "hello");
            }
        });
    }
    while let Some(res) = ok.join_next().await {
        res.unwrap();
    }
    assert!(started.elapsed() < BOUND);
    tokio::time::timeout(BOUND, noise).await.unwrap().unwrap();
    drop(stalled);
}

//! Data-plane fidelity end to end: concurrency limits, timeouts, headers and drain, through
//! the real gateway, queue-proxy and app processes.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Serve mode from the start, one instance always there.
const WARM: [(&str, &str); 2] = [
    ("autoscaling.knative.dev/min-scale", "1"),
    ("autoscaling.knative.dev/target-burst-capacity", "0"),
];

#[test]
fn single_concurrency_never_overlaps() {
    let p = Platform::start();
    let marker = unique_marker("single");
    p.apply_wait(&service(
        "single",
        &marker,
        &WARM,
        &[("FAIL_ON_CONCURRENCY", "1")],
        &[],
        "      containerConcurrency: 1\n",
    ));
    // Knative's TestSingleConcurrency: 5 clients, 100 requests; the app answers 500 if it
    // ever sees two at once.
    let bad = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..5)
        .map(|_| {
            let (gw, bad) = (p.gateway, bad.clone());
            std::thread::spawn(move || {
                for _ in 0..20 {
                    let s = http_get(gw, "single.default.localhost", "/?sleep=10")
                        .map(|r| r.status)
                        .unwrap_or(0);
                    if s != 200 {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(bad.load(Ordering::Relaxed), 0);
}

#[test]
fn revision_timeouts() {
    let p = Platform::start();
    let marker = unique_marker("timeouts");
    p.apply_wait(&service(
        "slowpoke",
        &marker,
        &WARM,
        &[],
        &[],
        "      timeoutSeconds: 2\n",
    ));
    let host = "slowpoke.default.localhost";
    // In time.
    let r = p.http_get(host, "/?sleep=300").unwrap();
    assert_eq!(r.status, 200);
    // Too slow: nothing was sent yet, so 504.
    let started = Instant::now();
    let r = p.http_get(host, "/?sleep=4000").unwrap();
    assert_eq!(r.status, 504, "{r:?}");
    assert!(r.body.contains("request timeout"), "{}", r.body);
    assert!(started.elapsed() < Duration::from_secs(4));
    // First byte in time, then a body slower than the total: the status stays, the body is cut.
    let r = http_get_raw(p.gateway, host, "/stream?chunks=5&interval=1000");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("chunk 0") && !r.contains("chunk 4"), "{r}");

    // Response-start and idle timeouts.
    p.apply_wait(&service(
        "starter",
        &marker,
        &WARM,
        &[],
        &[],
        "      timeoutSeconds: 10\n      responseStartTimeoutSeconds: 1\n      idleTimeoutSeconds: 1\n",
    ));
    let host = "starter.default.localhost";
    assert_eq!(p.http_get(host, "/?sleep=200").unwrap().status, 200);
    assert_eq!(p.http_get(host, "/?sleep=1500").unwrap().status, 504);
    // Writes every 300 ms keep an idle timeout of 1 s from firing.
    let r = p.http_get(host, "/stream?chunks=4&interval=300").unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.contains("chunk 3"), "{}", r.body);
    // A 1.5 s silence mid-body trips it: the body is cut.
    let r = http_get_raw(p.gateway, host, "/stream?chunks=3&interval=1500");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(!r.contains("chunk 2"), "{r}");
}

#[test]
fn headers_reach_the_app_and_internal_ones_cannot_be_injected() {
    let p = Platform::start();
    let marker = unique_marker("headers");
    p.apply_wait(&service("hdr", &marker, &WARM, &[], &[], ""));
    let mut s = TcpStream::connect(p.gateway).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /headers HTTP/1.1\r\nHost: hdr.default.localhost\r\nConnection: close\r\n\
         X-User-Header: kept\r\n\
         traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\
         Knative-Serving-Revision: evil\r\nKnative-Serving-Namespace: evil\r\n\
         K-Proxy-Request: activator\r\nK-Original-Host: evil.example\r\n\
         K-Network-Probe: queue\r\nK-Network-Hash: x\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let body = &raw[raw.find("\r\n\r\n").unwrap() + 4..];
    let body = body.trim_start_matches(|c: char| c.is_ascii_hexdigit() || c == '\r' || c == '\n');
    let json_end = body.rfind('}').unwrap();
    let seen: serde_json::Value = serde_json::from_str(&body[..=json_end]).unwrap();
    let h = &seen["headers"];
    assert_eq!(seen["host"], "hdr.default.localhost", "{seen}");
    assert_eq!(h["x-user-header"], "kept");
    assert_eq!(
        h["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert!(
        h["x-forwarded-for"].as_str().unwrap().contains("127.0.0.1"),
        "{h}"
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(h["forwarded"].as_str().unwrap().contains("for="), "{h}");
    for internal in [
        "knative-serving-revision",
        "knative-serving-namespace",
        "k-proxy-request",
        "k-original-host",
        "k-network-probe",
        "k-network-hash",
    ] {
        assert!(h.get(internal).is_none(), "{internal} reached the app: {h}");
    }
}

#[test]
fn delete_lets_long_requests_and_streams_finish() {
    let p = Platform::start();
    let marker = unique_marker("drain");
    p.apply_wait(&service("longrun", &marker, &WARM, &[], &[], ""));
    // A slow response (second chunk after 3 s) and a stream, both started before the delete.
    let slow = start_stream(
        p.gateway,
        "longrun.default.localhost",
        "/stream?chunks=2&interval=3000",
    );
    let stream = start_stream(
        p.gateway,
        "longrun.default.localhost",
        "/stream?chunks=6&interval=500",
    );
    for (started, _) in [&slow, &stream] {
        started
            .recv_timeout(PATIENCE)
            .expect("the response started before the delete");
    }
    p.cli_ok(&["delete", "ksvc", "longrun"]);
    let slow = slow.1.join().unwrap();
    assert!(slow.starts_with("HTTP/1.1 200"), "{slow}");
    assert!(
        slow.contains("chunk 1"),
        "the slow response finished: {slow}"
    );
    let stream = stream.1.join().unwrap();
    assert!(stream.contains("chunk 5"), "the stream finished: {stream}");
    // New requests no longer find the route.
    eventually("route gone", PATIENCE, || {
        (p.http_get("longrun.default.localhost", "/").ok()?.status == 404).then_some(())
    });
    eventually("instance gone after drain", PATIENCE, || {
        pids_with_env(&marker).is_empty().then_some(())
    });
}

/// A GET whose raw response text is returned as it came (to see cut-off bodies).
fn http_get_raw(addr: std::net::SocketAddr, host: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    String::from_utf8_lossy(&raw).into_owned()
}

/// Starts a GET whose first body bytes signal on the channel; the thread returns the whole
/// raw response once it ends.
fn start_stream(
    addr: std::net::SocketAddr,
    host: &str,
    path: &str,
) -> (
    std::sync::mpsc::Receiver<()>,
    std::thread::JoinHandle<String>,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let (host, path) = (host.to_string(), path.to_string());
    let h = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let mut signalled = false;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
            if !signalled && String::from_utf8_lossy(&raw).contains("chunk 0") {
                let _ = tx.send(());
                signalled = true;
            }
        }
        String::from_utf8_lossy(&raw).into_owned()
    });
    (rx, h)
}

#[test]
fn websocket_through_gateway_survives_delete_until_closed() {
    let p = Platform::start();
    let marker = unique_marker("ws");
    p.apply_wait(&service("chat", &marker, &WARM, &[], &[], ""));
    let mut ws = ws_connect(p.gateway, "chat.default.localhost");
    ws_send_text(&mut ws, "hello");
    assert_eq!(ws_read_text(&mut ws), "hello");

    // Delete the service while the socket is open: it keeps working until the client closes.
    p.cli_ok(&["delete", "ksvc", "chat"]);
    eventually("route gone", PATIENCE, || {
        (p.http_get("chat.default.localhost", "/").ok()?.status == 404).then_some(())
    });
    ws_send_text(&mut ws, "still here");
    assert_eq!(ws_read_text(&mut ws), "still here");
    assert!(
        !pids_with_env(&marker).is_empty(),
        "the instance drains, not dies"
    );
    drop(ws);
    eventually("instance gone once the socket closed", PATIENCE, || {
        pids_with_env(&marker).is_empty().then_some(())
    });
}

/// Opens a WebSocket to the test app's `/ws` through the gateway.
fn ws_connect(addr: std::net::SocketAddr, host: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "handshake cut short");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    s
}

fn ws_send_text(s: &mut TcpStream, text: &str) {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).unwrap();
}

fn ws_read_text(s: &mut TcpStream) -> String {
    let mut hdr = [0u8; 2];
    s.read_exact(&mut hdr).unwrap();
    assert_eq!(hdr[0] & 0x0f, 1, "a text frame");
    let len = (hdr[1] & 0x7f) as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    String::from_utf8(payload).unwrap()
}

#[test]
fn scale_down_drains_an_open_stream() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start_with(&["--config", &fast_config(dir.path(), &[])]);
    let marker = unique_marker("scaledown");
    let ann = [
        ("autoscaling.knative.dev/target", "1"),
        ("autoscaling.knative.dev/target-burst-capacity", "0"),
        ("autoscaling.knative.dev/min-scale", "1"),
        ("autoscaling.knative.dev/max-scale", "3"),
    ];
    p.apply_wait(&service("shrink", &marker, &ann, &[], &[], ""));
    let host = "shrink.default.localhost";
    // Three concurrent requests scale the revision to three instances...
    let long = start_stream(p.gateway, host, "/stream?chunks=25&interval=1000");
    long.0.recv_timeout(PATIENCE).unwrap();
    let short: Vec<_> = (0..2)
        .map(|_| start_stream(p.gateway, host, "/stream?chunks=4&interval=1000"))
        .collect();
    eventually("scaled up to 3", PATIENCE, || {
        (pids_with_env(&marker).len() == 3).then_some(())
    });
    for s in short {
        assert!(s.1.join().unwrap().contains("chunk 3"));
    }
    // ...then the load drops to the one long stream: the revision scales down while it is
    // still open, and it finishes whole wherever it runs.
    eventually(
        "scaled down with the stream open",
        Duration::from_secs(40),
        || (pids_with_env(&marker).len() < 3).then_some(()),
    );
    let body = long.1.join().unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.contains("chunk 24"),
        "the stream finished whole: {body}"
    );
}

#[test]
fn large_bodies_stream_through_without_being_held() {
    let p = Platform::start();
    let marker = unique_marker("large");
    p.apply_wait(&service("big", &marker, &WARM, &[], &[], ""));
    let pid = p.child.as_ref().unwrap().id();
    let rss_before = rss_kib(pid);
    const SIZE: usize = 64 << 20;
    let mut s = TcpStream::connect(p.gateway).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /echo HTTP/1.1\r\nHost: big.default.localhost\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 16];
        for _ in 0..SIZE / chunk.len() {
            writer.write_all(&chunk).unwrap();
        }
    });
    // Read the echo while sending: the body flows through, it is never collected whole.
    let mut received = 0usize;
    let mut head_done = false;
    let mut head = Vec::new();
    let mut peak = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        if head_done {
            received += n;
        } else {
            head.extend_from_slice(&buf[..n]);
            if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                head_done = true;
                received += head.len() - i - 4;
            }
        }
        peak = peak.max(rss_kib(pid));
    }
    sender.join().unwrap();
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The echo comes back chunked: the chunk framing adds a little to the raw byte count.
    assert!(received >= SIZE, "received {received} of {SIZE}");
    let grew = peak.saturating_sub(rss_before);
    println!("rss before {rss_before} KiB, peak {peak} KiB while streaming 64 MiB");
    assert!(
        grew < 32 * 1024,
        "rouse serve grew by {grew} KiB: the body was buffered"
    );
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    let p = Platform::start();
    let marker = unique_marker("pipeline");
    p.apply_wait(&service("pipe", &marker, &WARM, &[], &[], ""));
    let mut s = TcpStream::connect(p.gateway).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // Three requests written at once on one connection; the slow first must not be overtaken.
    write!(
        s,
        "GET /headers?n=1&sleep=300 HTTP/1.1\r\nHost: pipe.default.localhost\r\n\r\n\
         GET /headers?n=2 HTTP/1.1\r\nHost: pipe.default.localhost\r\n\r\n\
         GET /headers?n=3 HTTP/1.1\r\nHost: pipe.default.localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert_eq!(raw.matches("HTTP/1.1 200").count(), 3, "{raw}");
    let order: Vec<usize> = ["n=1", "n=2", "n=3"]
        .iter()
        .map(|n| raw.find(n).unwrap_or(usize::MAX))
        .collect();
    assert!(order[0] < order[1] && order[1] < order[2], "{raw}");
}

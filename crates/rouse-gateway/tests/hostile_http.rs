//! Hostile HTTP/1.1 clients, byte for byte: header spoofing through `Connection` and
//! underscores, forwarding headers, malformed chunking, Host and target games, `h2c` upgrade
//! offers, and slow uploads. Each case goes through the gateway on the fast path and on the
//! general path where it reaches both, and to a queue-proxy's own listener.
//!
//! The app is a raw recorder: it keeps every byte it receives, answers each request with the
//! head it got as the body, and writes its header names Title-Case (`X-App`), which the fast
//! path passes through as written and the general path lowercases: so each answer tells which
//! path served it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rouse_activator::{Activator, ActivatorConfig, RevisionParams};
use rouse_gateway::{Gateway, Mode, RouteTarget, RoutingTable, TrustedProxies};
use rouse_http::ServerLimits;
use rouse_queue::{QueueConfig, QueueProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

const BOUND: Duration = Duration::from_secs(15);
const NS: &str = "default";
const REV: &str = "echo-00001";
const HOST: &str = "echo.default.localhost";

// ---------------------------------------------------------------------------------------------
// The app

#[derive(Default)]
struct Seen {
    /// Every byte the app received, over all its connections.
    bytes: Vec<u8>,
    /// The heads of the complete requests it answered, in order.
    heads: Vec<String>,
    /// Their bodies.
    bodies: Vec<Vec<u8>>,
}

#[derive(Clone)]
struct RawApp {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl RawApp {
    async fn start() -> RawApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(app_conn(tcp, s.clone()));
            }
        });
        RawApp { addr, seen }
    }

    fn bytes(&self) -> Vec<u8> {
        self.seen.lock().unwrap().bytes.clone()
    }

    fn requests(&self) -> usize {
        self.seen.lock().unwrap().heads.len()
    }
}

async fn app_conn(mut tcp: TcpStream, seen: Arc<Mutex<Seen>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // Every complete request in the buffer is answered.
        while let Some((head, body, used)) = complete_request(&buf) {
            buf.drain(..used);
            let resp = format!(
                "HTTP/1.1 200 OK\r\nX-App: raw\r\nContent-Length: {}\r\n\r\n{head}",
                head.len()
            );
            {
                let mut s = seen.lock().unwrap();
                s.heads.push(head);
                s.bodies.push(body);
            }
            if tcp.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                seen.lock().unwrap().bytes.extend_from_slice(&chunk[..n]);
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// A complete request at the start of `buf`: its head, its (decoded) body and its length.
fn complete_request(buf: &[u8]) -> Option<(String, Vec<u8>, usize)> {
    let head_end = find(buf, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let rest = &buf[head_end..];
    if let Some(n) = header_of(&head, "content-length") {
        let n: usize = n.parse().ok()?;
        return (rest.len() >= n).then(|| (head, rest[..n].to_vec(), head_end + n));
    }
    if header_of(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let line_end = at + find(&rest[at..], b"\r\n")?;
            let size = usize::from_str_radix(
                std::str::from_utf8(&rest[at..line_end])
                    .ok()?
                    .split(';')
                    .next()?,
                16,
            )
            .ok()?;
            at = line_end + 2;
            if size == 0 {
                let end = at + find(&rest[at..], b"\r\n")? + 2;
                return Some((head, body, head_end + end));
            }
            if rest.len() < at + size + 2 {
                return None;
            }
            body.extend_from_slice(&rest[at..at + size]);
            at += size + 2;
        }
    }
    Some((head, Vec::new(), head_end))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of header `name` in a head (any case).
fn header_of<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn header_names(head: &str) -> Vec<String> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| {
            l.split_once(':')
                .map(|(n, _)| n.trim().to_ascii_lowercase())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The platform

struct Stack {
    gw_addr: SocketAddr,
    gw: Arc<Gateway>,
    act: Arc<Activator>,
    qp: QueueProxy,
    app: RawApp,
}

async fn stack(cc: u32, limits: ServerLimits) -> Stack {
    let app = RawApp::start().await;
    let cfg = QueueConfig {
        container_concurrency: cc,
        ..QueueConfig::new(app.addr, NS, REV)
    };
    let qp = QueueProxy::start(cfg).await.unwrap();
    let act = Activator::new(ActivatorConfig::default(), Arc::new(|_: &str, _: &str| {}));
    act.set_revision(
        NS,
        REV,
        RevisionParams {
            container_concurrency: cc,
            ..RevisionParams::default()
        },
    );
    act.set_backends(NS, REV, vec![qp.addr()]);
    let gw = Gateway::new(act.clone());
    let mut table = RoutingTable::new();
    table.insert(
        HOST.into(),
        vec![RouteTarget {
            namespace: NS.into(),
            revision: REV.into(),
            percent: 100,
        }],
    );
    gw.set_routes(table);
    gw.set_endpoints(NS, REV, vec![qp.addr()]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw_addr = listener.local_addr().unwrap();
    tokio::spawn(
        gw.clone()
            .serve_with(listener, std::future::pending(), limits),
    );
    let mut ready = qp.ready();
    timeout(BOUND, ready.wait_for(|r| *r))
        .await
        .expect("app ready")
        .unwrap();
    Stack {
        gw_addr,
        gw,
        act,
        qp,
        app,
    }
}

// ---------------------------------------------------------------------------------------------
// The client

#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: String,
}

impl Resp {
    /// Whether the fast path served it (the app's header name case kept).
    fn fast(&self) -> bool {
        self.head.contains("\r\nX-App: raw\r\n")
    }

    fn answered_by_app(&self) -> bool {
        header_of(&self.head, "x-app") == Some("raw")
    }
}

/// Sends `raw` on a new connection and reads one response.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    read_response(&mut s).await
}

async fn read_response(s: &mut TcpStream) -> Resp {
    timeout(BOUND, async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
                let len: usize = header_of(&head, "content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let status = head[9..12].parse().unwrap();
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                    return Resp { status, head, body };
                }
            }
            let n = s.read(&mut chunk).await.unwrap_or(0);
            assert!(n > 0, "connection closed before a full response: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("response timed out")
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn req(lines: &str) -> Vec<u8> {
    lines.replace("{HOST}", HOST).into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Item 3: Connection, underscores, forwarding headers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_drop_forwarding_headers_and_underscored_ones_never_arrive() {
    let st = stack(0, ServerLimits::default()).await;
    // The bytes (general path: the Connection options), and the same without the
    // Connection header (fast path).
    let general = req(
        "GET /cx2 HTTP/1.1\r\nHost: {HOST}\r\nConnection: X-Forwarded-For, Forwarded\r\n\
         X_Forwarded_For: 6.6.6.6\r\n\r\n",
    );
    let fast = req("GET /cx2 HTTP/1.1\r\nHost: {HOST}\r\nX_Forwarded_For: 6.6.6.6\r\n\r\n");
    for (raw, on_fast) in [(&general, false), (&fast, true)] {
        let r = exchange(st.gw_addr, raw).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.fast(), on_fast, "{r:?}");
        let app_head = &r.body;
        assert_eq!(
            header_of(app_head, "x-forwarded-for"),
            Some("127.0.0.1"),
            "{app_head}"
        );
        assert_eq!(
            header_of(app_head, "forwarded"),
            Some(format!("for=127.0.0.1;host={HOST};proto=http").as_str()),
            "{app_head}"
        );
        assert!(!app_head.contains("6.6.6.6"), "{app_head}");
        assert!(
            header_names(app_head).iter().all(|n| !n.contains('_')),
            "{app_head}"
        );
    }
    // A queue-proxy's own listener drops the underscore header too, and keeps what the hop
    // before it set.
    let r = exchange(
        st.qp.addr(),
        &req("GET /cx2 HTTP/1.1\r\nHost: {HOST}\r\nConnection: X-Forwarded-For, Forwarded\r\n\
              X-Forwarded-For: 10.0.0.1\r\nForwarded: for=10.0.0.1\r\nX_Forwarded_For: 6.6.6.6\r\n\r\n"),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        header_of(&r.body, "x-forwarded-for"),
        Some("10.0.0.1"),
        "{}",
        r.body
    );
    assert_eq!(
        header_of(&r.body, "forwarded"),
        Some("for=10.0.0.1"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("6.6.6.6"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_host_keeps_the_original_host() {
    let st = stack(0, ServerLimits::default()).await;
    let raw = req("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: Host\r\n\r\n");
    for addr in [st.gw_addr, st.qp.addr()] {
        let r = exchange(addr, &raw).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(header_of(&r.body, "host"), Some(HOST), "{}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_underscored_internal_header_never_reaches_the_app() {
    let st = stack(0, ServerLimits::default()).await;
    let fast = req("GET / HTTP/1.1\r\nHost: {HOST}\r\nK_Original_Host: admin.internal\r\n\r\n");
    let general = req(
        "GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: keep-alive, x-opt\r\n\
         K_Original_Host: admin.internal\r\n\r\n",
    );
    for (addr, raw, on_fast) in [
        (st.gw_addr, &fast, true),
        (st.gw_addr, &general, false),
        // A queue-proxy's own listener has a fast path too.
        (st.qp.addr(), &fast, true),
    ] {
        let r = exchange(addr, raw).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.fast(), on_fast, "{r:?}");
        assert!(!r.body.contains("admin.internal"), "{}", r.body);
        assert_eq!(header_of(&r.body, "host"), Some(HOST), "{}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_sets_x_forwarded_proto_unless_the_client_is_a_trusted_proxy() {
    let st = stack(0, ServerLimits::default()).await;
    let fast = req("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Forwarded-Proto: https\r\n\r\n");
    let general = req(
        "GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: keep-alive, x-opt\r\n\
         X-Forwarded-Proto: https\r\n\r\n",
    );
    for (raw, on_fast) in [(&fast, true), (&general, false)] {
        let r = exchange(st.gw_addr, raw).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.fast(), on_fast, "{r:?}");
        assert_eq!(
            header_of(&r.body, "x-forwarded-proto"),
            Some("http"),
            "{}",
            r.body
        );
    }
    // A proxy in front (loopback here) keeps its own.
    st.gw
        .set_trusted_proxies(TrustedProxies::parse("127.0.0.0/8").unwrap());
    for (raw, on_fast) in [(&fast, true), (&general, false)] {
        let r = exchange(st.gw_addr, raw).await;
        assert_eq!(r.fast(), on_fast, "{r:?}");
        assert_eq!(
            header_of(&r.body, "x-forwarded-proto"),
            Some("https"),
            "{}",
            r.body
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Protocol strictness

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chunk_sizes_get_400_and_the_app_never_sees_the_request() {
    let st = stack(0, ServerLimits::default()).await;
    let bodies: [&[u8]; 6] = [
        b"5g\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        // 2^64: one more than a u64 holds.
        b"10000000000000000\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\n0\n\n",
        b"5\r\nhello\n0\r\n\r\n",
    ];
    for addr in [st.gw_addr, st.qp.addr()] {
        for body in bodies {
            let mut raw =
                req("POST /up HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n");
            raw.extend_from_slice(body);
            let r = exchange(addr, &raw).await;
            assert_eq!(
                r.status,
                400,
                "{:?} to {addr}: {r:?}",
                String::from_utf8_lossy(body)
            );
            assert!(!r.answered_by_app());
        }
    }
    assert!(
        st.app.bytes().is_empty(),
        "{:?}",
        String::from_utf8_lossy(&st.app.bytes())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_or_conflicting_host_gets_400() {
    let st = stack(0, ServerLimits::default()).await;
    for raw in [
        req("GET / HTTP/1.1\r\nHost: {HOST}\r\nHost: {HOST}\r\n\r\n"),
        req("GET / HTTP/1.1\r\nHost: {HOST}\r\nHost: admin.internal\r\n\r\n"),
        req("GET / HTTP/1.1\r\nHost: admin.internal\r\nHost: {HOST}\r\n\r\n"),
        req("GET / HTTP/1.1\r\nHost: {HOST}, admin.internal\r\n\r\n"),
    ] {
        for addr in [st.gw_addr, st.qp.addr()] {
            let r = exchange(addr, &raw).await;
            assert_eq!(r.status, 400, "{r:?}");
        }
    }
    assert_eq!(st.app.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_targets_authority_wins_over_host() {
    let st = stack(0, ServerLimits::default()).await;
    let raw = req("GET http://{HOST}/p?q=1 HTTP/1.1\r\nHost: other.example\r\n\r\n");
    let r = exchange(st.gw_addr, &raw).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.starts_with("GET /p?q=1 HTTP/1.1\r\n"), "{}", r.body);
    assert_eq!(header_of(&r.body, "host"), Some(HOST), "{}", r.body);
    // The other way round: the authority names no route, whatever the Host says.
    let raw = req("GET http://other.example/ HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let r = exchange(st.gw_addr, &raw).await;
    assert_eq!(r.status, 404, "{r:?}");
    // At a queue-proxy's own listener too.
    let raw = req("GET http://{HOST}/p HTTP/1.1\r\nHost: other.example\r\n\r\n");
    let r = exchange(st.qp.addr(), &raw).await;
    assert_eq!(header_of(&r.body, "host"), Some(HOST), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_without_a_slash_or_an_asterisk_gets_400() {
    let st = stack(0, ServerLimits::default()).await;
    for raw in [
        req("GET noslash HTTP/1.1\r\nHost: {HOST}\r\n\r\n"),
        req("OPTIONS * HTTP/1.1\r\nHost: {HOST}\r\n\r\n"),
    ] {
        for addr in [st.gw_addr, st.qp.addr()] {
            let r = exchange(addr, &raw).await;
            assert_eq!(r.status, 400, "{:?}: {r:?}", String::from_utf8_lossy(&raw));
        }
    }
    assert_eq!(st.app.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_offer_is_stripped_before_the_app() {
    let st = stack(0, ServerLimits::default()).await;
    let raw = req(
        "GET /u HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    );
    for addr in [st.gw_addr, st.qp.addr()] {
        let r = exchange(addr, &raw).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.answered_by_app());
        let names = header_names(&r.body);
        for gone in ["upgrade", "http2-settings", "connection"] {
            assert!(!names.iter().any(|n| n == gone), "{gone} in {}", r.body);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Slow uploads

/// Sends a POST of `pieces` times `abc`, one piece every `gap` (chunked: the general path; or
/// with a Content-Length: the fast path), counting each piece in `sent`, then reads the answer.
async fn trickle(
    addr: SocketAddr,
    chunked: bool,
    pieces: usize,
    gap: Duration,
    sent: Arc<AtomicUsize>,
) -> Resp {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = if chunked {
        "POST /upload HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n".to_string()
    } else {
        format!(
            "POST /upload HTTP/1.1\r\nHost: {{HOST}}\r\nContent-Length: {}\r\n\r\n",
            3 * pieces
        )
    };
    s.write_all(&req(&head)).await.unwrap();
    for _ in 0..pieces {
        let piece: &[u8] = if chunked { b"3\r\nabc\r\n" } else { b"abc" };
        s.write_all(piece).await.unwrap();
        sent.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(gap).await;
    }
    if chunked {
        s.write_all(b"0\r\n\r\n").await.unwrap();
    }
    read_response(&mut s).await
}

/// Slow uploaders on a `containerConcurrency: 1` revision hold no slot: a normal request
/// goes through while they trickle, and each upload reaches the app whole.
async fn slow_uploads_do_not_block(st: &Stack, addr: SocketAddr) {
    let before = st.app.requests();
    let sent = Arc::new(AtomicUsize::new(0));
    // Two chunked (general path) and, through the gateway, two with a length (fast path).
    let kinds: &[bool] = if addr == st.gw_addr {
        &[true, true, false, false]
    } else {
        &[true, true]
    };
    let uploaders: Vec<_> = kinds
        .iter()
        .map(|&chunked| {
            let sent = sent.clone();
            tokio::spawn(trickle(addr, chunked, 20, Duration::from_millis(100), sent))
        })
        .collect();
    // Every uploader has sent its head and begun its body.
    wait_until("uploads to start", || {
        sent.load(Ordering::SeqCst) >= 2 * kinds.len()
    })
    .await;
    let r = exchange(addr, &req("GET /normal HTTP/1.1\r\nHost: {HOST}\r\n\r\n")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        uploaders.iter().all(|u| !u.is_finished()),
        "the normal request waited for the uploads"
    );
    // Nor do the uploads wait in the activator for a slot.
    assert_eq!(st.act.waiting(NS, REV), 0);
    for u in uploaders {
        let r = u.await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
    let seen = st.app.seen.lock().unwrap();
    assert_eq!(seen.heads.len(), before + 1 + kinds.len());
    let uploads: Vec<_> = seen.bodies[before..]
        .iter()
        .filter(|b| !b.is_empty())
        .collect();
    assert_eq!(uploads.len(), kinds.len());
    assert!(
        uploads
            .iter()
            .all(|b| b.as_slice() == "abc".repeat(20).as_bytes())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_hold_no_slot_through_the_gateway_or_at_the_queue_proxy() {
    let st = stack(1, ServerLimits::default()).await;
    slow_uploads_do_not_block(&st, st.gw_addr).await;
    slow_uploads_do_not_block(&st, st.qp.addr()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_hold_no_activator_slot() {
    let st = stack(1, ServerLimits::default()).await;
    st.gw.set_revision(NS, REV, Mode::Proxy, vec![], false);
    slow_uploads_do_not_block(&st, st.gw_addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_and_the_app_sees_nothing() {
    let limits = ServerLimits {
        body_read_timeout: Some(Duration::from_millis(500)),
        ..ServerLimits::default()
    };
    let st = stack(1, limits).await;
    // Chunked (general path) and with a length (fast path).
    for raw in [
        req("POST /up HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"),
        req("POST /up HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 10\r\n\r\nhel"),
    ] {
        let started = Instant::now();
        let r = exchange(st.gw_addr, &raw).await;
        assert_eq!(r.status, 408, "{r:?}");
        assert!(started.elapsed() >= Duration::from_millis(500));
    }
    assert!(
        st.app.bytes().is_empty(),
        "{:?}",
        String::from_utf8_lossy(&st.app.bytes())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_under_the_minimum_rate_gets_408() {
    let limits = ServerLimits {
        body_read_timeout: Some(Duration::from_secs(5)),
        min_body_rate: Some(rouse_http::MinBodyRate {
            bytes_per_second: 1000,
            grace: Duration::from_millis(600),
        }),
        ..ServerLimits::default()
    };
    let st = stack(1, limits).await;
    let mut s = TcpStream::connect(st.gw_addr).await.unwrap();
    s.write_all(&req(
        "POST /up HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n",
    ))
    .await
    .unwrap();
    // 3 bytes every 100 ms: far under 1000 bytes/s, though never silent for the read timeout.
    let writer = tokio::spawn(async move {
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(b"3\r\nabc\r\n").await.is_err() {
                break;
            }
        }
        s
    });
    let started = Instant::now();
    let mut s = writer.await.unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 408, "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(6));
    assert!(st.app.bytes().is_empty());
}

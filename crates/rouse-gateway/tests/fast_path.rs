//! The gateway's HTTP/1.1 fast path end to end, with real sockets: a raw TCP client (exact
//! control over keep-alive and pipelining) → `Gateway` → an in-process `QueueProxy` → an app.
//!
//! The hyper app writes Title-Case header names. The fast path passes the app's head through
//! as written while the general (hyper) server writes lowercase names, so each of the app's
//! answers tells which path served it (`X-Conn` vs `x-conn`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rouse_activator::{Activator, ActivatorConfig, RevisionParams};
use rouse_gateway::{Gateway, Mode, RouteTarget, RoutingTable};
use rouse_http::ServerLimits;
use rouse_queue::{QueueConfig, QueueProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};
use tokio::time::{Instant, timeout};

const BOUND: Duration = Duration::from_secs(10);
const NS: &str = "default";
const REV: &str = "fast-00001";
const HOST: &str = "fast.default.example.com";

type AppBody = UnsyncBoxBody<Bytes, Infallible>;

// ---------------------------------------------------------------------------------------------
// The app

/// The hyper test app. Every answer carries `X-Conn`: the number of the app connection it went
/// over (1 for the first accepted).
struct App {
    addr: SocketAddr,
    /// `/gate` waits for a permit of this.
    gate: Arc<Semaphore>,
    /// `/gate` requests waiting now.
    at_gate: Arc<AtomicUsize>,
}

impl App {
    /// Lets `n` waiting (or future) `/gate` requests through.
    fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }
}

/// Decrements a counter when dropped (a handler future dropped midway counts too).
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn app() -> App {
    app_on(TcpListener::bind("127.0.0.1:0").await.unwrap())
}

fn app_on(listener: TcpListener) -> App {
    let addr = listener.local_addr().unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let at_gate = Arc::new(AtomicUsize::new(0));
    let (g, w) = (gate.clone(), at_gate.clone());
    tokio::spawn(async move {
        for conn in 1usize.. {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (g, w) = (g.clone(), w.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| app_answer(req, conn, g.clone(), w.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .title_case_headers(true)
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    App {
        addr,
        gate,
        at_gate,
    }
}

fn full(s: impl Into<Bytes>) -> AppBody {
    Full::new(s.into()).boxed_unsync()
}

/// The number after `key=` in the query (`?ms=N`, `?n=N`); 0 without.
fn query_num(req: &Request<Incoming>, key: &str) -> usize {
    req.uri()
        .query()
        .and_then(|q| q.strip_prefix(key))
        .and_then(|q| q.strip_prefix('='))
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

/// `/` "hello"; `/headers` the request headers as `name: value` lines; `/echo` the request
/// body; `/chunked` three chunks and an `x-checksum` trailer; `/drip?ms=N` a chunk, a pause,
/// another; `/big?n=N` and `/bigchunked?n=N` N bytes of [`pattern`]; `/slow?ms=N`; `/gate` (waits for [`App::release`]); `/close` with
/// `Connection: close`; `/nocontent` 204; `/notmodified` 304.
async fn app_answer(
    req: Request<Incoming>,
    conn: usize,
    gate: Arc<Semaphore>,
    at_gate: Arc<AtomicUsize>,
) -> Result<Response<AppBody>, Infallible> {
    let path = req.uri().path().to_string();
    let mut resp = match path.as_str() {
        "/" => Response::new(full("hello")),
        "/headers" => {
            let mut out = String::new();
            for (k, v) in req.headers() {
                out.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("<binary>")));
            }
            Response::new(full(out))
        }
        "/echo" => {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Response::new(full(body))
        }
        "/chunked" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", "abc123".parse().unwrap());
            let frames = vec![
                Frame::data(Bytes::from("one,")),
                Frame::data(Bytes::from("two,")),
                Frame::data(Bytes::from("three")),
                Frame::trailers(trailers),
            ];
            let body = StreamBody::new(stream::iter(frames.into_iter().map(Ok)));
            Response::builder()
                .header("trailer", "x-checksum")
                .body(body.boxed_unsync())
                .unwrap()
        }
        "/drip" => {
            let ms = query_num(&req, "ms") as u64;
            let first = stream::iter([Ok(Frame::data(Bytes::from("first")))]);
            // The app's pause between chunks (what the test is about), not a wait.
            let later = stream::once(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(Frame::data(Bytes::from("later")))
            });
            Response::new(StreamBody::new(first.chain(later)).boxed_unsync())
        }
        "/big" => Response::new(full(pattern(query_num(&req, "n")))),
        "/bigchunked" => {
            let body = pattern(query_num(&req, "n"));
            let frames: Vec<_> = body
                .chunks(16 * 1024)
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            Response::new(StreamBody::new(stream::iter(frames)).boxed_unsync())
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query_num(&req, "ms") as u64)).await;
            Response::new(full("slept"))
        }
        "/gate" => {
            at_gate.fetch_add(1, Ordering::SeqCst);
            let _waiting = Counted(at_gate);
            // Bounded: a test that never releases does not leave a task forever.
            if let Ok(Ok(permit)) = timeout(Duration::from_secs(30), gate.acquire()).await {
                permit.forget();
            }
            Response::new(full("released"))
        }
        "/close" => Response::builder()
            .header("connection", "close")
            .body(full("closing"))
            .unwrap(),
        "/nocontent" => Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(Empty::new().boxed_unsync())
            .unwrap(),
        "/notmodified" => Response::builder()
            .status(StatusCode::NOT_MODIFIED)
            .header("etag", "\"v1\"")
            .body(Empty::new().boxed_unsync())
            .unwrap(),
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(full("no such path"))
            .unwrap(),
    };
    resp.headers_mut().insert("x-conn", conn.into());
    Ok(resp)
}

/// A raw app, for what hyper will not do. `/once` answers, then closes its connection
/// unanswered at the next request on it; `/short` promises 10 bytes, sends 5 and closes;
/// `/until-close` has no length and closes; `/interim` sends a 103 before its 200; `/extra`
/// sends a stray response right after its own; `/bye` is framed for keep-alive but closes;
/// anything else gets "raw". It sends no `Date`.
async fn raw_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(raw_conn(tcp));
        }
    });
    addr
}

async fn raw_conn(mut tcp: TcpStream) {
    let mut buf = Vec::new();
    let mut doomed = false;
    loop {
        let end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if !read_more(&mut tcp, &mut buf).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let len = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < end + len {
            if !read_more(&mut tcp, &mut buf).await {
                return;
            }
        }
        buf.drain(..end + len);
        if doomed {
            return;
        }
        let path = head.split(' ').nth(1).unwrap_or("/");
        let reply: &[u8] = match path {
            "/once" => {
                doomed = true;
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nonce"
            }
            "/short" => {
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
                    .await;
                return;
            }
            "/until-close" => {
                let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\n\r\nall of it").await;
                return;
            }
            "/bye" => {
                // Framed for keep-alive, yet the app closes right after.
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbye")
                    .await;
                return;
            }
            "/extra" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray",
            "/interim" => {
                b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
                  HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            }
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nraw",
        };
        if tcp.write_all(reply).await.is_err() {
            return;
        }
    }
}

async fn read_more(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match tcp.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Gateway + queue-proxy

/// A gateway routing [`HOST`] (Serve mode) to a real queue-proxy in front of an app.
struct Stack {
    addr: SocketAddr,
    gw: Arc<Gateway>,
    qp: QueueProxy,
    /// Stops the gateway's server (dropping it does too).
    stop: Option<oneshot::Sender<()>>,
    /// The gateway's server.
    done: tokio::task::JoinHandle<()>,
}

async fn stack(app_addr: SocketAddr, tune: impl FnOnce(&mut QueueConfig)) -> Stack {
    stack_with(app_addr, ActivatorConfig::default(), tune).await
}

async fn stack_with(
    app_addr: SocketAddr,
    act_cfg: ActivatorConfig,
    tune: impl FnOnce(&mut QueueConfig),
) -> Stack {
    stack_limited(app_addr, act_cfg, tune, ServerLimits::default()).await
}

async fn stack_limited(
    app_addr: SocketAddr,
    act_cfg: ActivatorConfig,
    tune: impl FnOnce(&mut QueueConfig),
    limits: ServerLimits,
) -> Stack {
    let mut cfg = QueueConfig::new(app_addr, NS, REV);
    tune(&mut cfg);
    let qp = QueueProxy::start(cfg).await.unwrap();
    let act = Activator::new(act_cfg, Arc::new(|_: &str, _: &str| {}));
    let gw = Gateway::new(act);
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
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = rx.await;
    };
    let done = tokio::spawn(gw.clone().serve_with(listener, shutdown, limits));
    Stack {
        addr,
        gw,
        qp,
        stop: Some(stop),
        done,
    }
}

impl Stack {
    async fn conn(&self) -> Conn {
        Conn::open(self.addr).await
    }

    /// Waits (bounded) until nothing is in flight anywhere.
    async fn settled(&self) {
        wait_until("requests to finish", || {
            self.gw.in_flight() == 0
                && self.gw.in_flight_for(NS, REV) == 0
                && self.qp.in_flight() == 0
        })
        .await;
    }
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The raw client

/// One client connection; responses are parsed by hand from its bytes.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Resp {
    status: u16,
    /// The head as received.
    head: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Data chunks of a chunked body (the last, empty, one not counted).
    chunks: usize,
    trailers: Vec<(String, String)>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The app's answer, passed through by the fast path (header names as the app wrote them).
    fn fast(&self) -> bool {
        self.headers.iter().any(|(n, _)| n == "X-Conn")
    }

    /// The app's answer, re-served by the general (hyper) server (lowercase names).
    fn general(&self) -> bool {
        self.headers.iter().any(|(n, _)| n == "x-conn")
    }

    /// The app connection it went over.
    fn app_conn(&self) -> usize {
        self.header("x-conn")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no x-conn: {}", self.head))
    }

    #[track_caller]
    fn assert_ok(&self, body: &str) {
        assert_eq!(
            (self.status, self.text().as_str()),
            (200, body),
            "{}",
            self.head
        );
    }
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let s = timeout(BOUND, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        s.set_nodelay(true).unwrap();
        Conn { s, buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        timeout(BOUND, self.s.write_all(bytes))
            .await
            .expect("write timed out")
            .expect("write");
    }

    /// Reads more bytes into the buffer; false at the end of the stream (or a reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match timeout(BOUND, self.s.read(&mut chunk))
            .await
            .expect("read timed out")
        {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    async fn need(&mut self, n: usize) {
        while self.buf.len() < n {
            assert!(
                self.fill().await,
                "connection ended with {} of {n} bytes: {:?}",
                self.buf.len(),
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// One CRLF-terminated line, without the CRLF.
    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return line;
            }
            assert!(
                self.fill().await,
                "connection ended mid-line: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// A response head (status line and fields).
    async fn head(&mut self) -> Resp {
        let status_line = self.line().await;
        assert!(
            status_line.starts_with("HTTP/1.1 ") || status_line.starts_with("HTTP/1.0 "),
            "bad status line {status_line:?}"
        );
        let status = status_line[9..12].parse().expect("status code");
        let mut head = format!("{status_line}\r\n");
        let mut headers = Vec::new();
        loop {
            let line = self.line().await;
            head.push_str(&line);
            head.push_str("\r\n");
            if line.is_empty() {
                break;
            }
            let (n, v) = line.split_once(':').expect("header line");
            headers.push((n.to_string(), v.trim().to_string()));
        }
        Resp {
            status,
            head,
            headers,
            body: Vec::new(),
            chunks: 0,
            trailers: Vec::new(),
        }
    }

    /// A whole response to a request (`head_request`: to a HEAD, so no body).
    async fn response(&mut self, head_request: bool) -> Resp {
        let mut r = self.head().await;
        let chunked = r
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let length = r
            .header("content-length")
            .map(|v| v.parse::<usize>().unwrap());
        if head_request || r.status == 204 || r.status == 304 {
            return r;
        }
        if chunked {
            loop {
                let size_line = self.line().await;
                let size = size_line.split(';').next().unwrap().trim();
                let size = usize::from_str_radix(size, 16).expect("chunk size");
                if size == 0 {
                    loop {
                        let line = self.line().await;
                        if line.is_empty() {
                            return r;
                        }
                        let (n, v) = line.split_once(':').expect("trailer line");
                        r.trailers.push((n.to_string(), v.trim().to_string()));
                    }
                }
                self.need(size + 2).await;
                r.body.extend_from_slice(&self.buf[..size]);
                assert_eq!(&self.buf[size..size + 2], b"\r\n", "chunk end");
                self.buf.drain(..size + 2);
                r.chunks += 1;
            }
        } else if let Some(n) = length {
            self.need(n).await;
            r.body = self.buf.drain(..n).collect();
        } else {
            r.body = self.until_eof().await;
        }
        r
    }

    /// Everything until the peer closes.
    async fn until_eof(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }

    async fn call(&mut self, req: &[u8]) -> Resp {
        self.send(req).await;
        self.response(req.starts_with(b"HEAD ")).await
    }

    /// Asserts the server closes the connection with nothing more sent.
    async fn expect_closed(&mut self) {
        let rest = self.until_eof().await;
        assert!(
            rest.is_empty(),
            "bytes before the close: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").into_bytes()
}

fn with_headers(method: &str, path: &str, extra: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n{extra}\r\n").into_bytes()
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// A body that shows any shifted, lost or repeated byte.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

fn headers_of(body: &str) -> Vec<(String, String)> {
    body.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    let app = app().await;
    let st = stack(app.addr, |_| {}).await;
    let mut c = st.conn().await;
    let mut app_conns = Vec::new();
    for _ in 0..5 {
        let r = c.call(&get("/")).await;
        r.assert_ok("hello");
        assert!(r.fast(), "not served by the fast path: {}", r.head);
        assert!(r.header("date").is_some(), "{}", r.head);
        app_conns.push(r.app_conn());
    }
    // Explicit keep-alive and a Host with case and port qualify too.
    let r = c
        .call(
            b"GET / HTTP/1.1\r\nHost: FAST.default.example.com:80\r\nConnection: keep-alive\r\n\r\n",
        )
        .await;
    r.assert_ok("hello");
    assert!(r.fast(), "{}", r.head);
    app_conns.push(r.app_conn());
    assert!(
        app_conns.iter().all(|n| *n == app_conns[0]),
        "one pooled app connection carries sequential requests: {app_conns:?}"
    );

    // Three requests in one write: answered in order.
    let mut batch = get("/headers");
    batch.extend(post("/echo", b"second"));
    batch.extend(get("/"));
    c.send(&batch).await;
    let first = c.response(false).await;
    assert_eq!(first.status, 200);
    assert!(first.text().contains("host: fast.default.example.com\n"));
    assert!(first.fast(), "{}", first.head);
    let second = c.response(false).await;
    second.assert_ok("second");
    assert!(second.fast(), "{}", second.head);
    let third = c.response(false).await;
    third.assert_ok("hello");
    assert!(third.fast(), "{}", third.head);
    assert!(c.buf.is_empty(), "extra bytes: {:?}", c.buf);

    // Pipelined with the second head split mid-line across writes.
    let mut batch = get("/");
    let next = post("/echo", b"split");
    batch.extend_from_slice(&next[..10]);
    c.send(&batch).await;
    c.response(false).await.assert_ok("hello");
    c.send(&next[10..]).await;
    c.response(false).await.assert_ok("split");
    st.settled().await;
}

#[tokio::test]
async fn post_bodies_echo_exactly_on_both_paths() {
    let app = app().await;
    let st = stack(app.addr, |_| {}).await;
    let mut c = st.conn().await;
    let small = pattern(10 * 1024);
    let r = c.call(&post("/echo", &small)).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.body == small, "10 KB body changed");
    assert!(r.fast(), "{}", r.head);

    // Exactly the limit still goes fast; its head and body sent in separate writes.
    let limit = pattern(64 * 1024);
    let req = post("/echo", &limit);
    let split = req.len() - limit.len() + 100;
    c.send(&req[..split]).await;
    c.send(&req[split..]).await;
    let r = c.response(false).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.body == limit, "64 KiB body changed");
    assert!(r.fast(), "{}", r.head);

    // One byte over: the general server streams it (and keeps the connection).
    let big = pattern(64 * 1024 + 1);
    let r = c.call(&post("/echo", &big)).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.body == big, "64 KiB + 1 body changed");
    assert!(r.general(), "{}", r.head);
    let r = c.call(&get("/")).await;
    r.assert_ok("hello");
    assert!(r.general(), "the connection stays with the general server");
    st.settled().await;
}

#[tokio::test]
async fn head_204_and_304_have_no_body_and_keep_the_connection() {
    let app = app().await;
    let st = stack(app.addr, |_| {}).await;
    let mut c = st.conn().await;
    let r = c.call(&with_headers("HEAD", "/", "")).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.header("content-length"), Some("5"), "{}", r.head);
    assert!(r.fast(), "{}", r.head);
    // Any body byte sent after the HEAD answer would garble this one.
    c.call(&get("/")).await.assert_ok("hello");

    let r = c.call(&get("/nocontent")).await;
    assert_eq!(r.status, 204, "{}", r.head);
    assert!(r.fast(), "{}", r.head);
    c.call(&get("/")).await.assert_ok("hello");

    let r = c.call(&get("/notmodified")).await;
    assert_eq!(r.status, 304, "{}", r.head);
    assert_eq!(r.header("etag"), Some("\"v1\""));
    assert!(r.fast(), "{}", r.head);
    c.call(&get("/")).await.assert_ok("hello");

    // Pipelined HEAD then GET.
    let mut batch = with_headers("HEAD", "/", "");
    batch.extend(get("/"));
    c.send(&batch).await;
    assert_eq!(c.response(true).await.status, 200);
    c.response(false).await.assert_ok("hello");
    assert!(c.buf.is_empty(), "extra bytes: {:?}", c.buf);
    st.settled().await;
}

#[tokio::test]
async fn a_chunked_response_with_a_trailer_arrives_intact() {
    let app = app().await;
    let st = stack(app.addr, |_| {}).await;
    let mut c = st.conn().await;
    for _ in 0..2 {
        let r = c
            .call(&with_headers("GET", "/chunked", "TE: trailers\r\n"))
            .await;
        assert_eq!(r.status, 200, "{}", r.head);
        assert!(r.fast(), "{}", r.head);
        assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{}", r.head);
        assert!(r.header("content-length").is_none(), "{}", r.head);
        assert_eq!(r.text(), "one,two,three");
        assert_eq!(r.chunks, 3, "chunks passed through as sent");
        assert_eq!(
            r.trailers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.as_str()))
                .collect::<Vec<_>>(),
            vec![("x-checksum".to_string(), "abc123")],
        );
        c.call(&get("/")).await.assert_ok("hello");
    }
    st.settled().await;
}

#[tokio::test]
async fn an_app_closing_after_each_response_does_not_end_the_client_connection() {
    let app = app().await;
    let st = stack(app.addr, |_| {}).await;
    let mut c = st.conn().await;
    let mut app_conns = Vec::new();
    for _ in 0..3 {
        let r = c.call(&get("/close")).await;
        r.assert_ok("closing");
        assert!(r.fast(), "{}", r.head);
        assert!(
            r.header("connection").is_none(),
            "the app's close is its own connection's: {}",
            r.head
        );
        app_conns.push(r.app_conn());
    }
    let r = c.call(&get("/")).await;
    r.assert_ok("hello");
    app_conns.push(r.app_conn());
    let mut distinct = app_conns.clone();
    distinct.dedup();
    assert_eq!(distinct, app_conns, "a closed app connection was reused");
    // Pipelined too.
    let mut batch = get("/close");
    batch.extend(get("/close"));
    batch.extend(get("/"));
    c.send(&batch).await;
    c.response(false).await.assert_ok("closing");
    c.response(false).await.assert_ok("closing");
    c.response(false).await.assert_ok("hello");
    st.settled().await;
}

/// The forwarding headers added and the internal and hop-by-hop ones gone, as the app saw them.
#[track_caller]
fn assert_forwarding(body: &str) {
    let h = headers_of(body);
    let get = |name: &str| -> Vec<&str> {
        h.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(get("host"), vec![HOST], "{body}");
    assert_eq!(get("x-user"), vec!["kept"], "{body}");
    assert_eq!(
        get("x-forwarded-for"),
        vec!["203.0.113.9, 127.0.0.1"],
        "{body}"
    );
    assert_eq!(get("x-forwarded-proto"), vec!["http"], "{body}");
    assert_eq!(
        get("forwarded"),
        vec![format!("for=127.0.0.1;host={HOST};proto=http").as_str()],
        "{body}"
    );
    for (name, _) in &h {
        assert!(
            !(name.starts_with("knative-serving-")
                || name.starts_with("k-network-")
                || name == "k-proxy-request"
                || name == "k-original-host"
                || name == "keep-alive"
                || name == "proxy-connection"),
            "{name} reached the app: {body}"
        );
    }
}

#[tokio::test]
async fn forwarding_headers_are_added_and_internal_and_hop_by_hop_ones_dropped() {
    let app = app().await;
    let st = stack(app.addr, |_| {}).await;
    let extra = "Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
                 K-Proxy-Request: activator\r\nKnative-Serving-Foo: bar\r\n\
                 Knative-Serving-Revision: other-00001\r\nK-Original-Host: evil.example.com\r\n\
                 X-Forwarded-For: 203.0.113.9\r\nX-User: kept\r\n";
    let mut c = st.conn().await;
    let r = c.call(&with_headers("GET", "/headers", extra)).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.fast(), "{}", r.head);
    assert_forwarding(&r.text());
    // The app saw no Connection header from the fast path.
    assert!(
        !headers_of(&r.text()).iter().any(|(n, _)| n == "connection"),
        "{}",
        r.text()
    );

    // The general path (a request that does not qualify: Connection: close) does the same.
    let extra = extra.replace("Connection: keep-alive\r\n", "Connection: close\r\n");
    let r = c.call(&with_headers("GET", "/headers", &extra)).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.general(), "{}", r.head);
    assert_forwarding(&r.text());
    c.expect_closed().await;
    st.settled().await;
}

#[tokio::test]
async fn a_request_that_does_not_qualify_mid_connection_is_handed_over() {
    let app = app().await;
    let st = stack(app.addr, |_| {}).await;

    // A chunked request body after fast requests, pipelined with one more request.
    let mut c = st.conn().await;
    for _ in 0..2 {
        let r = c.call(&get("/")).await;
        r.assert_ok("hello");
        assert!(r.fast(), "{}", r.head);
    }
    let mut batch = with_headers("POST", "/echo", "Transfer-Encoding: chunked\r\n");
    batch.extend_from_slice(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    batch.extend(get("/"));
    c.send(&batch).await;
    let r = c.response(false).await;
    r.assert_ok("hello world");
    assert!(r.general(), "{}", r.head);
    let r = c.response(false).await;
    r.assert_ok("hello");
    assert!(r.general(), "{}", r.head);

    // A fast request and a chunked one in the same write: the bytes already read go along.
    let mut c = st.conn().await;
    let mut batch = get("/");
    batch.extend(with_headers(
        "POST",
        "/echo",
        "Transfer-Encoding: chunked\r\n",
    ));
    batch.extend_from_slice(b"3\r\nabc\r\n0\r\n\r\n");
    c.send(&batch).await;
    let r = c.response(false).await;
    r.assert_ok("hello");
    assert!(r.fast(), "{}", r.head);
    let r = c.response(false).await;
    r.assert_ok("abc");
    assert!(r.general(), "{}", r.head);

    // Connection: close after fast requests: answered, then closed.
    let mut c = st.conn().await;
    c.call(&get("/")).await.assert_ok("hello");
    let r = c
        .call(&with_headers("GET", "/", "Connection: close\r\n"))
        .await;
    r.assert_ok("hello");
    assert!(r.general(), "{}", r.head);
    assert_eq!(r.header("connection"), Some("close"), "{}", r.head);
    c.expect_closed().await;

    // Expect: 100-continue goes the general way and still gets its body through.
    let mut c = st.conn().await;
    c.call(&get("/")).await.assert_ok("hello");
    c.send(&with_headers(
        "POST",
        "/echo",
        "Content-Length: 4\r\nExpect: 100-continue\r\n",
    ))
    .await;
    let interim = c.head().await;
    assert_eq!(interim.status, 100, "{}", interim.head);
    c.send(b"ping").await;
    c.response(false).await.assert_ok("ping");
    st.settled().await;
}

#[tokio::test]
async fn container_concurrency_queues_then_refuses() {
    let app = app().await;
    let st = stack(app.addr, |cfg| cfg.container_concurrency = 1).await;
    let mut holder = st.conn().await;
    holder.send(&get("/gate")).await;
    wait_until("the first request at the app", || {
        app.at_gate.load(Ordering::SeqCst) == 1
    })
    .await;

    // 10 more wait their turn (10 × containerConcurrency)...
    let mut queued = Vec::new();
    for _ in 0..10 {
        let mut c = st.conn().await;
        c.send(&get("/")).await;
        queued.push(c);
    }
    wait_until("10 queued", || st.qp.queued() == 10).await;
    assert_eq!(st.gw.in_flight_for(NS, REV), 11);

    // ...and beyond that the answer is a 503 at once; the connection stays usable.
    let mut refused = Vec::new();
    for _ in 0..2 {
        let mut c = st.conn().await;
        let r = c.call(&get("/")).await;
        assert_eq!(r.status, 503, "{}", r.head);
        assert_eq!(r.text(), "pending request queue full\n");
        assert!(r.header("connection").is_none(), "{}", r.head);
        refused.push(c);
    }
    assert_eq!(st.qp.queued(), 10);

    app.release(1);
    holder.response(false).await.assert_ok("released");
    for c in &mut queued {
        let r = c.response(false).await;
        r.assert_ok("hello");
        assert!(r.fast(), "{}", r.head);
    }
    // The refused connections carry a request fine once there is room.
    for c in &mut refused {
        c.call(&get("/")).await.assert_ok("hello");
    }
    st.settled().await;
    assert_eq!(st.qp.queued(), 0);
}

#[tokio::test]
async fn a_busy_keep_alive_connection_outlives_the_idle_timeout_and_an_idle_one_does_not() {
    let app = app().await;
    let idle = Duration::from_millis(600);
    let limits = ServerLimits {
        idle_timeout: Some(idle),
        ..ServerLimits::default()
    };
    let st = stack_limited(app.addr, ActivatorConfig::default(), |_| {}, limits).await;
    let mut c = st.conn().await;
    // Fast requests for three idle timeouts, with gaps far shorter than one: stays open.
    let started = Instant::now();
    let mut last_sent = started;
    while started.elapsed() < idle * 3 {
        last_sent = Instant::now();
        let r = c.call(&get("/")).await;
        r.assert_ok("hello");
        assert!(r.fast(), "{}", r.head);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Then quiet: closed once the idle timeout has passed since the last answer (so never
    // before it passed since the last request was sent).
    c.expect_closed().await;
    let after = last_sent.elapsed();
    assert!(
        after >= idle && after < idle + Duration::from_secs(4),
        "closed after {after:?}"
    );
    st.settled().await;
}

#[tokio::test]
async fn a_response_start_timeout_gives_504_and_the_connection_goes_on() {
    let app = app().await;
    let st = stack(app.addr, |cfg| {
        cfg.response_start_timeout = Some(Duration::from_millis(300));
    })
    .await;
    let mut c = st.conn().await;
    c.call(&get("/")).await.assert_ok("hello");
    let started = Instant::now();
    let r = c.call(&get("/slow?ms=5000")).await;
    assert_eq!(r.status, 504, "{}", r.head);
    assert_eq!(r.text(), "request timeout\n");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered only after {:?}",
        started.elapsed()
    );
    let r = c.call(&get("/")).await;
    r.assert_ok("hello");
    assert!(r.fast(), "{}", r.head);
    st.settled().await;
}

#[tokio::test]
async fn an_idle_timeout_mid_body_closes_the_client_connection() {
    let app = app().await;
    let st = stack(app.addr, |cfg| {
        cfg.idle_timeout = Some(Duration::from_millis(1000));
    })
    .await;
    let mut c = st.conn().await;
    let r = c.call(&get("/drip?ms=50")).await;
    r.assert_ok("firstlater");
    assert!(r.fast(), "{}", r.head);

    c.send(&get("/drip?ms=5000")).await;
    let started = Instant::now();
    let r = c.head().await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.fast(), "{}", r.head);
    let rest = c.until_eof().await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "cut only after {:?}",
        started.elapsed()
    );
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("first"), "{rest:?}");
    assert!(
        !rest.contains("later") && !rest.ends_with("0\r\n\r\n"),
        "{rest:?}"
    );
    st.settled().await;
}

#[tokio::test]
async fn a_client_hanging_up_releases_its_request() {
    let app = app().await;
    let st = stack(app.addr, |cfg| cfg.container_concurrency = 1).await;
    let mut holder = st.conn().await;
    holder.send(&get("/gate")).await;
    wait_until("the request at the app", || {
        app.at_gate.load(Ordering::SeqCst) == 1
    })
    .await;
    let mut waiter = st.conn().await;
    waiter.send(&get("/")).await;
    wait_until("one queued", || st.qp.queued() == 1).await;
    assert_eq!(st.gw.in_flight(), 2);
    assert_eq!(st.qp.in_flight(), 2);

    // Hanging up while queued gives up the place.
    drop(waiter);
    wait_until("the queued request released", || {
        st.qp.queued() == 0 && st.qp.in_flight() == 1 && st.gw.in_flight() == 1
    })
    .await;

    // Hanging up while the app works releases the request and its slot.
    drop(holder);
    st.settled().await;
    let mut c = st.conn().await;
    let r = c.call(&get("/")).await;
    r.assert_ok("hello");
    assert!(r.fast(), "{}", r.head);
    app.release(1);
    st.settled().await;
}

#[tokio::test]
async fn counts_return_to_zero_and_the_load_report_counts_fast_requests() {
    let app = app().await;
    let st = stack(app.addr, |_| {}).await;
    let before = st.qp.take_stats();
    assert_eq!(before.request_count, 0.0);
    let mut c = st.conn().await;
    for i in 0..7 {
        let r = if i % 2 == 0 {
            c.call(&get("/")).await
        } else {
            c.call(&post("/echo", b"x")).await
        };
        assert_eq!(r.status, 200, "{}", r.head);
        assert!(r.fast(), "{}", r.head);
    }
    st.settled().await;
    assert_eq!(st.gw.in_flight_for(NS, REV), 0);
    let stats = st.qp.take_stats();
    assert_eq!(stats.request_count, 7.0, "{stats:?}");
    assert_eq!(stats.proxied_request_count, 0.0, "{stats:?}");
    assert!(stats.average_concurrency > 0.0, "{stats:?}");
}

#[tokio::test]
async fn malformed_requests_get_400_and_unknown_hosts_404() {
    let app = app().await;
    let st = stack(app.addr, |_| {}).await;

    let mut c = st.conn().await;
    let r = c.call(b"NOT A REQUEST\r\n\r\n").await;
    assert_eq!(r.status, 400, "{}", r.head);
    c.expect_closed().await;

    // After fast requests on the same connection too.
    let mut c = st.conn().await;
    c.call(&get("/")).await.assert_ok("hello");
    let r = c
        .call(format!("GET /a b HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    assert_eq!(r.status, 400, "{}", r.head);
    c.expect_closed().await;

    // No Host at all.
    let mut c = st.conn().await;
    let r = c.call(b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.status, 400, "{}", r.head);

    // Unknown host: 404 from the gateway, and the connection goes on.
    let mut c = st.conn().await;
    c.call(&get("/")).await.assert_ok("hello");
    let r = c
        .call(b"GET / HTTP/1.1\r\nHost: nope.default.example.com\r\n\r\n")
        .await;
    assert_eq!(r.status, 404, "{}", r.head);
    assert!(
        r.text().contains("nope.default.example.com"),
        "{}",
        r.text()
    );
    let r = c.call(&get("/")).await;
    r.assert_ok("hello");
    assert!(r.general(), "{}", r.head);
    st.settled().await;
}

#[tokio::test]
async fn a_dead_pooled_app_connection_is_retried_only_when_safe() {
    let st = stack(raw_app().await, |_| {}).await;
    let mut c = st.conn().await;
    // The app answers, then closes this connection at the next request on it.
    let r = c.call(&get("/once")).await;
    r.assert_ok("once");
    assert!(r.header("date").is_some(), "a Date is added: {}", r.head);
    // That GET meets the dead connection and goes again on a new one.
    c.call(&get("/")).await.assert_ok("raw");
    // An app connection closed right after its answer is not used again.
    for _ in 0..3 {
        c.call(&get("/bye")).await.assert_ok("bye");
        c.call(&get("/")).await.assert_ok("raw");
    }
    // A POST that meets one is not sent again: 502, and the client connection goes on.
    c.call(&get("/once")).await.assert_ok("once");
    let r = c.call(&post("/", b"not twice")).await;
    assert_eq!(r.status, 502, "{}", r.head);
    c.call(&get("/")).await.assert_ok("raw");
    st.settled().await;
}

#[tokio::test]
async fn unusual_app_answers_are_framed_right() {
    let st = stack(raw_app().await, |_| {}).await;
    let mut c = st.conn().await;
    // A 103 before the answer is skipped.
    c.call(&get("/interim")).await.assert_ok("ok");

    // A body that ends with the connection: passed on, and the client connection closes.
    let r = c.call(&get("/until-close")).await;
    r.assert_ok("all of it");
    assert_eq!(r.header("connection"), Some("close"), "{}", r.head);
    c.expect_closed().await;

    // A body shorter than its length: the client connection is cut, not left hanging.
    let mut c = st.conn().await;
    c.send(&get("/short")).await;
    let r = c.head().await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.header("content-length"), Some("10"), "{}", r.head);
    assert_eq!(c.until_eof().await, b"hello");
    st.settled().await;
}

#[tokio::test]
async fn large_responses_stream_through_and_the_app_connection_is_reused() {
    let app = app().await;
    let st = stack(app.addr, |_| {}).await;
    let mut c = st.conn().await;
    let n = 1024 * 1024 + 3;
    let first = c.call(&get("/")).await;
    first.assert_ok("hello");
    for path in ["/big", "/bigchunked"] {
        let r = c.call(&get(&format!("{path}?n={n}"))).await;
        assert_eq!(r.status, 200, "{}", r.head);
        assert!(r.fast(), "{}", r.head);
        assert!(
            r.body == pattern(n),
            "{path}: {} bytes, changed",
            r.body.len()
        );
        let next = c.call(&get("/")).await;
        next.assert_ok("hello");
        assert_eq!(
            next.app_conn(),
            first.app_conn(),
            "the app connection went back to the pool after {path}"
        );
    }
    // HEAD of a chunked answer: no body, and the connection goes on.
    let r = c.call(&with_headers("HEAD", "/bigchunked?n=10", "")).await;
    assert_eq!(r.status, 200, "{}", r.head);
    c.call(&get("/")).await.assert_ok("hello");
    st.settled().await;
}

#[tokio::test]
async fn other_requests_the_fast_path_does_not_take_are_served_right() {
    let app = app().await;
    let st = stack(app.addr, |_| {}).await;

    // HTTP/1.0: answered, then closed.
    let mut c = st.conn().await;
    c.send(format!("GET / HTTP/1.0\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    let r = c.head().await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.general(), "{}", r.head);
    let rest = c.until_eof().await;
    assert!(
        rest.ends_with(b"hello"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );

    // Absolute-form target.
    let mut c = st.conn().await;
    let r = c
        .call(format!("GET http://{HOST}/headers HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.general(), "{}", r.head);
    assert!(
        r.text().contains(&format!("host: {HOST}\n")),
        "{}",
        r.text()
    );

    // More header fields than the fast path parses.
    let mut c = st.conn().await;
    c.call(&get("/")).await.assert_ok("hello");
    let many: String = (0..80).map(|i| format!("X-Many-{i}: {i}\r\n")).collect();
    let r = c.call(&with_headers("GET", "/headers", &many)).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.general(), "{}", r.head);
    assert!(r.text().contains("x-many-79: 79\n"), "{}", r.text());

    // A health-check header goes the general way, and still reaches the app, not the
    // queue-proxy's health check.
    let mut c = st.conn().await;
    c.call(&get("/")).await.assert_ok("hello");
    let r = c
        .call(&with_headers("GET", "/", "K-Network-Probe: queue\r\n"))
        .await;
    r.assert_ok("hello");
    assert!(r.general(), "{}", r.head);
    st.settled().await;
}

#[tokio::test]
async fn shutdown_finishes_fast_requests_in_flight_and_closes_idle_connections() {
    let app = app().await;
    let mut st = stack(app.addr, |_| {}).await;
    let mut idle = st.conn().await;
    idle.call(&get("/")).await.assert_ok("hello");
    let mut busy = st.conn().await;
    busy.send(&get("/gate")).await;
    // The general path's behaviour, for reference (absolute-form target).
    let mut busy_general = st.conn().await;
    busy_general
        .send(format!("GET http://{HOST}/gate HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    wait_until("the requests at the app", || {
        app.at_gate.load(Ordering::SeqCst) == 2
    })
    .await;

    st.stop.take().unwrap().send(()).unwrap();
    idle.expect_closed().await;
    app.release(2);
    let reference = busy_general.response(false).await;
    reference.assert_ok("released");
    assert!(reference.general(), "{}", reference.head);
    busy_general.expect_closed().await;
    let r = busy.response(false).await;
    r.assert_ok("released");
    assert!(r.fast(), "{}", r.head);
    busy.expect_closed().await;
    // A client must learn the connection will not carry another request, as the general
    // server tells it.
    assert_eq!(
        (reference.header("connection"), r.header("connection")),
        (Some("close"), Some("close")),
        "general:\n{}fast:\n{}",
        reference.head,
        r.head
    );
    timeout(BOUND, &mut st.done)
        .await
        .expect("the server did not stop")
        .unwrap();
    assert!(
        TcpStream::connect(st.addr).await.is_err(),
        "still accepting"
    );
    st.settled().await;
}

#[tokio::test]
async fn an_app_connection_with_stray_bytes_is_not_reused() {
    let st = stack(raw_app().await, |_| {}).await;
    let mut c = st.conn().await;
    for _ in 0..3 {
        c.call(&get("/extra")).await.assert_ok("ok");
        // The stray answer must not be taken for this one's.
        c.call(&get("/")).await.assert_ok("raw");
    }
    st.settled().await;
}

#[tokio::test]
async fn an_invalid_content_length_is_refused_as_the_general_server_does() {
    let app = app().await;
    let st = stack(app.addr, |_| {}).await;
    // RFC 9112 §6.3: an invalid Content-Length (1*DIGIT; a sign is not a digit) is an
    // unrecoverable framing error: 400, then close. It must not reach the app, whose
    // connection is shared by every client.
    for (value, general_first) in [("+5", true), ("+5", false), ("5, 5", false)] {
        let mut c = st.conn().await;
        if general_first {
            // The general server's answer, as the reference (absolute-form target first).
            c.call(format!("GET http://{HOST}/ HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
                .await
                .assert_ok("hello");
        } else {
            c.call(&get("/")).await.assert_ok("hello");
        }
        let req =
            format!("POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {value}\r\n\r\nhello");
        let r = c.call(req.as_bytes()).await;
        // The general server's own 400 (lowercase names), not the app's passed through.
        assert!(
            r.status == 400
                && r.header("connection") == Some("close")
                && r.head.contains("\r\ncontent-length: "),
            "Content-Length: {value} (general server first: {general_first}):\n{}",
            r.head
        );
        c.expect_closed().await;
    }
    st.settled().await;
}

#[tokio::test]
async fn a_client_hanging_up_mid_body_releases_its_request() {
    let app = app().await;
    let st = stack(app.addr, |cfg| cfg.container_concurrency = 1).await;
    // The general path (absolute-form target) first, as the reference; then the fast path.
    let general = format!("GET http://{HOST}/drip?ms=30000 HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    for (req, fast) in [(general.into_bytes(), false), (get("/drip?ms=30000"), true)] {
        let mut c = st.conn().await;
        c.send(&req).await;
        let r = c.head().await;
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.fast(), fast, "{}", r.head);
        c.need(1).await;
        assert_eq!(st.gw.in_flight(), 1);
        assert_eq!(st.qp.in_flight(), 1);
        // The app is silent for 30 s; the hang-up alone must end the request.
        drop(c);
        wait_until(
            &format!("the request to end after the hang-up (fast path: {fast})"),
            || st.gw.in_flight() == 0 && st.qp.in_flight() == 0,
        )
        .await;
        let mut c = st.conn().await;
        c.call(&get("/")).await.assert_ok("hello");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_keep_alive_clients_get_their_own_answers() {
    let app = app().await;
    let st = stack(app.addr, |_| {}).await;
    let mut clients = Vec::new();
    for client in 0..8 {
        let addr = st.addr;
        clients.push(tokio::spawn(async move {
            let mut c = Conn::open(addr).await;
            let mut fast = 0;
            for i in 0..150 {
                let body = format!("client {client} request {i}");
                let r = match i % 3 {
                    0 => c.call(&post("/echo", body.as_bytes())).await,
                    1 => {
                        // Two pipelined: answered in order.
                        let mut batch = post("/echo", body.as_bytes());
                        batch.extend(get("/"));
                        c.send(&batch).await;
                        let r = c.response(false).await;
                        c.response(false).await.assert_ok("hello");
                        r
                    }
                    _ => c.call(&post("/echo", body.as_bytes())).await,
                };
                r.assert_ok(&body);
                fast += usize::from(r.fast());
            }
            fast
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for c in clients {
        let fast = timeout(deadline - Instant::now(), c)
            .await
            .expect("load did not finish")
            .unwrap();
        assert_eq!(fast, 150, "every request took the fast path");
    }
    st.settled().await;
    assert_eq!(st.qp.take_stats().request_count, 8.0 * 200.0);
}

/// The activator's count of requests it answered with 200 for the revision.
fn activator_200s(act: &Activator) -> usize {
    act.metrics_text()
        .lines()
        .find(|l| {
            l.starts_with("rouse_activator_requests_total{")
                && l.contains(&format!("revision=\"{REV}\""))
                && l.contains("code=\"200\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn proxy_mode_requests_go_fast_or_wait_in_the_activator() {
    let app = app().await;
    let st = stack(app.addr, |_| {}).await;
    let act = st.gw.activator().clone();
    act.set_backends(NS, REV, vec![st.qp.addr()]);
    wait_until("the activator to see the instance ready", || {
        act.ready_backends(NS, REV).len() == 1
    })
    .await;
    let mut c = st.conn().await;
    let r = c.call(&get("/")).await;
    r.assert_ok("hello");
    assert!(r.fast(), "{}", r.head);
    st.settled().await;
    let stats = st.qp.take_stats();
    assert_eq!(
        (stats.request_count, stats.proxied_request_count),
        (1.0, 0.0),
        "{stats:?}"
    );

    // Proxy mode with a free instance: still fast (on the same connection), counted as the
    // activator's.
    st.gw
        .set_revision(NS, REV, Mode::Proxy, vec![st.qp.addr()], false);
    let before = activator_200s(&act);
    for _ in 0..3 {
        let r = c.call(&get("/headers")).await;
        assert_eq!(r.status, 200, "{}", r.head);
        assert!(r.fast(), "{}", r.head);
        assert_forwarding_basics(&r.text());
    }
    st.settled().await;
    let stats = st.qp.take_stats();
    assert_eq!(
        (stats.request_count, stats.proxied_request_count),
        (3.0, 3.0),
        "{stats:?}"
    );
    assert_eq!(activator_200s(&act), before + 3);

    // No instance: the activator buffers it until there is one.
    act.set_backends(NS, REV, vec![]);
    let mut waiting = st.conn().await;
    waiting.send(&get("/")).await;
    wait_until("the request to wait in the activator", || {
        act.waiting(NS, REV) == 1
    })
    .await;
    act.set_backends(NS, REV, vec![st.qp.addr()]);
    let r = waiting.response(false).await;
    r.assert_ok("hello");
    assert!(r.header("k-cold-start").is_some(), "{}", r.head);
    st.settled().await;

    // An endpoint that is not a queue-proxy of this process (here the app itself): still the
    // fast path, over kept-alive raw connections, naming the revision for an activator.
    st.gw.set_endpoints(NS, REV, vec![app.addr]);
    let mut c = st.conn().await;
    for _ in 0..2 {
        let r = c.call(&get("/headers")).await;
        assert_eq!(r.status, 200, "{}", r.head);
        assert!(r.fast(), "{}", r.head);
        let h = headers_of(&r.text());
        let named = |n: &str| h.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(named("knative-serving-namespace").as_deref(), Some(NS));
        assert_eq!(named("knative-serving-revision").as_deref(), Some(REV));
    }
    st.settled().await;
}

#[track_caller]
fn assert_forwarding_basics(body: &str) {
    let h = headers_of(body);
    let has = |n: &str, v: &str| h.iter().any(|(hn, hv)| hn == n && hv == v);
    assert!(has("host", HOST), "{body}");
    assert!(has("x-forwarded-for", "127.0.0.1"), "{body}");
    assert!(has("x-forwarded-proto", "http"), "{body}");
    assert!(!h.iter().any(|(n, _)| n == "k-proxy-request"), "{body}");
}

#[tokio::test]
async fn a_head_that_never_completes_is_closed_by_the_header_read_timeout() {
    let app = app().await;
    let st = stack(app.addr, |_| {}).await;
    let limit = rouse_http::DEFAULT_HEADER_READ_TIMEOUT;
    // Both at once (a new connection, and one after a fast request): one timeout's wait.
    let mut conns = Vec::new();
    for fast_first in [false, true] {
        let mut c = st.conn().await;
        if fast_first {
            c.call(&get("/")).await.assert_ok("hello");
        }
        // Taken before the first byte of the head is sent, so never after the server's timer
        // starts, however late this task runs.
        let started = Instant::now();
        c.send(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Slow").as_bytes())
            .await;
        conns.push((c, fast_first, started));
    }
    let waits = conns
        .into_iter()
        .map(|(mut c, fast_first, started)| async move {
            let mut chunk = [0u8; 256];
            let read = timeout(limit + BOUND, c.s.read(&mut chunk))
                .await
                .expect("not closed by the header read timeout");
            assert!(
                matches!(read, Ok(0) | Err(_)),
                "fast first: {fast_first}: bytes: {:?}",
                read.map(|n| String::from_utf8_lossy(&chunk[..n]).into_owned())
            );
            assert!(
                started.elapsed() >= limit,
                "fast first: {fast_first}: closed too early: {:?}",
                started.elapsed()
            );
        });
    futures_util::future::join_all(waits).await;
    st.settled().await;
}

#[tokio::test]
async fn a_hundred_pipelined_requests_in_one_write_are_answered_in_order() {
    let app = app().await;
    let st = stack(app.addr, |_| {}).await;
    let mut c = st.conn().await;
    let mut batch = Vec::new();
    for i in 0..100 {
        if i % 10 == 9 {
            batch.extend(with_headers("HEAD", "/", ""));
        } else {
            batch.extend(post("/echo", format!("request {i}").as_bytes()));
        }
    }
    c.send(&batch).await;
    for i in 0..100 {
        let r = c.response(i % 10 == 9).await;
        assert!(r.fast(), "{i}: {}", r.head);
        if i % 10 == 9 {
            assert_eq!((r.status, r.body.len()), (200, 0), "{i}: {}", r.head);
        } else {
            r.assert_ok(&format!("request {i}"));
        }
    }
    assert!(c.buf.is_empty(), "extra bytes: {:?}", c.buf);
    st.settled().await;
    assert_eq!(st.qp.take_stats().request_count, 100.0);
}

#[tokio::test]
async fn a_head_too_large_gets_431_from_the_general_server() {
    let app = app().await;
    let st = stack(app.addr, |_| {}).await;
    let big = format!("X-Big: {}\r\n", "b".repeat(80 * 1024));
    // The general server's answer, as the reference (absolute-form target).
    let mut c = st.conn().await;
    let req = format!("GET http://{HOST}/ HTTP/1.1\r\nHost: {HOST}\r\n{big}\r\n");
    let r = c.call(req.as_bytes()).await;
    assert_eq!(r.status, 431, "general server: {}", r.head);
    c.expect_closed().await;
    // The same head in a request the fast path would otherwise take.
    let mut c = st.conn().await;
    c.call(&get("/")).await.assert_ok("hello");
    let r = c.call(&with_headers("GET", "/", &big)).await;
    assert_eq!(r.status, 431, "fast path: {}", r.head);
    c.expect_closed().await;
    st.settled().await;
}

#[tokio::test]
async fn an_app_that_cannot_be_reached_is_left_to_the_general_path() {
    let port = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = port.local_addr().unwrap();
    drop(port);
    let st = stack(dead, |_| {}).await;
    // Nothing listens. The fast path cannot connect and hands the request over; the
    // queue-proxy's general handler fails at once for an app no runtime manages...
    let mut c = st.conn().await;
    let r = c.call(&get("/")).await;
    assert_eq!(r.status, 502, "{}", r.head);
    assert!(!r.fast(), "{}", r.head);
    st.settled().await;

    // ...and waits for one the runtime is restarting, then serves it.
    st.qp.app_started();
    let mut c = st.conn().await;
    c.send(&get("/")).await;
    wait_until("the request to wait for the app", || st.qp.in_flight() == 1).await;
    let _app = app_on(TcpListener::bind(dead).await.expect("the app's port again"));
    let r = c.response(false).await;
    r.assert_ok("hello");
    assert!(r.general(), "{}", r.head);
    // Now the fast path can reach it; this connection stays with the general server.
    c.call(&get("/")).await.assert_ok("hello");
    let mut c = st.conn().await;
    let r = c.call(&get("/")).await;
    r.assert_ok("hello");
    assert!(r.fast(), "{}", r.head);
    st.settled().await;
}

#[tokio::test]
async fn requests_wait_in_the_activator_refused_timed_out_or_abandoned() {
    let app = app().await;
    let act_cfg = ActivatorConfig {
        queue_depth: 2,
        ..ActivatorConfig::default()
    };
    let st = stack_with(app.addr, act_cfg, |_| {}).await;
    let act = st.gw.activator().clone();
    act.set_backends(NS, REV, vec![]);
    st.gw.set_revision(NS, REV, Mode::Proxy, vec![], false);

    // The first one waiting has a second request pipelined behind it.
    let mut a = st.conn().await;
    let mut batch = get("/");
    batch.extend(post("/echo", b"behind"));
    a.send(&batch).await;
    let mut b = st.conn().await;
    b.send(&get("/")).await;
    wait_until("two waiting", || act.waiting(NS, REV) == 2).await;
    assert_eq!(st.gw.in_flight(), 2);
    assert_eq!(st.gw.in_flight_for(NS, REV), 2);

    // The queue is full: 503 at once, and the connection goes on.
    let mut c = st.conn().await;
    let r = c.call(&get("/")).await;
    assert_eq!(r.status, 503, "{}", r.head);
    assert!(r.text().contains("queue full"), "{}", r.text());

    // A client hanging up leaves the line.
    drop(b);
    wait_until("the abandoned request to leave", || {
        act.waiting(NS, REV) == 1 && st.gw.in_flight() == 1
    })
    .await;

    // A short wait budget: 503 with the reason when it runs out (as Knative's activator).
    act.set_revision(
        NS,
        REV,
        RevisionParams {
            timeout: Duration::from_millis(300),
            ..RevisionParams::default()
        },
    );
    let mut d = st.conn().await;
    let started = Instant::now();
    let r = d.call(&get("/")).await;
    assert_eq!(r.status, 503, "{}", r.head);
    assert!(
        r.text().contains("context deadline exceeded"),
        "{}",
        r.text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(act.waiting(NS, REV), 1);

    // An instance comes: the first one waiting is served, by the fast path.
    act.set_backends(NS, REV, vec![st.qp.addr()]);
    let r = a.response(false).await;
    r.assert_ok("hello");
    assert!(r.fast(), "{}", r.head);
    assert!(r.header("k-cold-start").is_some(), "{}", r.head);
    let r = a.response(false).await;
    r.assert_ok("behind");
    assert!(r.fast(), "{}", r.head);
    for conn in [&mut a, &mut c, &mut d] {
        let r = conn.call(&get("/")).await;
        r.assert_ok("hello");
        assert!(r.fast(), "{}", r.head);
    }
    st.settled().await;
}

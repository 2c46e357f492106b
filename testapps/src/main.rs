//! `rouse-testapp`: the workload Rouse's tests (and the README sample) run, in the spirit of
//! Knative's test images. It listens on `127.0.0.1:$PORT` (HTTP/1.1, or HTTP/2 cleartext only
//! with `--h2c`) and answers:
//!
//! - `/` — `Hello World! How about some tasty noodles?` (or `$MESSAGE`)
//! - `/env` — the process environment as a JSON object
//! - `/headers` — the request as JSON: `method`, `host`, `path`, `version`, `headers`
//! - `/stream?chunks=N&interval=MS` — N chunks (`chunk <i>\n`), MS apart, flushed as written
//! - `/echo` — the request body, streamed back
//! - `/ws` — a WebSocket (RFC 6455) echo: text and binary frames come back as sent, pings get
//!   pongs, a close is echoed; anything but a WebSocket handshake gets 400 (HTTP/1.1 only);
//!   the 101 carries `X-Message: $MESSAGE` when set
//! - `/status?code=N` — an empty response with that status
//! - gRPC (meant for `--h2c`; hand-written, see `grpc.rs`): `/grpc.health.v1.Health/Check`
//!   (SERVING for the empty service name, NOT_FOUND otherwise), `/grpc.health.v1.Health/Watch`
//!   (the status every 200 ms for 1 s, then OK) and `/rouse.test.Echo/Stream` (bidirectional:
//!   every request message echoed as it arrives, OK when the client ends)
//! - `/exit?code=N` — answers, then exits with that code
//! - `/crash-on-first-request` — exits with code 1 without answering if this is the process's
//!   first request (see `MARKER_DIR`), else answers like `/`
//!
//! - `/readyz` (also `/healthz/readiness`, `/healthz/liveness`) — 200 `ready`, or 503
//!   `not ready` once switched or until `READY_DELAY` has passed (for probes);
//!   `/toggle-ready` flips that, `/start-failing` makes it fail, both per process and with
//!   `?restore-after=MS` to switch back by themselves; they answer `pid=<pid> ready=<bool>`
//! - `/whoami` — the process id (tells instances apart)
//! - `/in-flight` — how many other requests this process is answering now
//! - `/timeout?initialTimeout=MS&timeout=MS` — like Knative's `timeout` image: the head after
//!   `initialTimeout`, the body `Slept for X milliseconds` after `timeout` more
//! - `/runtime` — like Knative's `runtime` image: args, cwd, uid/gid, stdin state (`eof`…),
//!   env, required paths, whether `/tmp` is writable and `/proc/sys` is not, as JSON
//!
//! Any path takes `?sleep=MS` to wait before answering, and like Knative's `autoscale` image
//! `?bloat=MiB` (allocate and touch that much memory first) and `?prime=N` (answer with the
//! largest prime below N, N ≤ 40 000 000).
//!
//! Environment (besides `PORT` and `MESSAGE`):
//! - `LISTEN_HOST` — the address to listen on (default `127.0.0.1`; `0.0.0.0` in a container).
//! - `FAIL_ON_CONCURRENCY=1` — like Knative's `singlethreaded` image: a request that overlaps
//!   another (from its arrival until its response head) answers 500 `concurrent requests
//!   detected`; both overlapping requests fail.
//! - `CRASH_ON_FIRST_REQUEST=1` — the process exits with code 1, without answering, on its
//!   first request, whatever the path.
//! - `READY_DELAY=10s` (or `500ms`) — like Knative's `readiness` image: the health routes fail
//!   for that long after the process starts.
//! - `MARKER_DIR=DIR` — a crash on a first request writes `DIR/crashed-on-first-request`;
//!   while that file exists no process crashes that way again (so a restarted instance
//!   serves).
//!
//! Readiness probes (`User-Agent: kube-probe/...`) are not requests for these checks.
//!
//! Flags: `--h2c`; `--print LINE` (print to stdout before anything else, repeatable);
//! `--exit-immediately CODE` (exit after printing, for crash tests); `--startup-delay MS`
//! (sleep before listening, for slow starts).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

mod grpc;
mod roles;
mod ws;

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

const DEFAULT_MESSAGE: &str = "Hello World! How about some tasty noodles?";
/// The file (under `MARKER_DIR`) that says a process already crashed on its first request.
const CRASH_MARKER: &str = "crashed-on-first-request";

/// Behaviour chosen by the environment, read once.
struct Env {
    fail_on_concurrency: bool,
    crash_on_first_request: bool,
    marker_dir: Option<PathBuf>,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let on = |k: &str| std::env::var(k).is_ok_and(|v| v == "1" || v == "true");
        Env {
            fail_on_concurrency: on("FAIL_ON_CONCURRENCY"),
            crash_on_first_request: on("CRASH_ON_FIRST_REQUEST"),
            marker_dir: std::env::var_os("MARKER_DIR").map(PathBuf::from),
        }
    })
}

/// Whether the process has had a (non-probe) request yet.
static HAD_REQUEST: AtomicBool = AtomicBool::new(false);
/// Requests between arrival and response head now (for `FAIL_ON_CONCURRENCY`).
static ACTIVE: AtomicU64 = AtomicU64::new(0);
/// Non-probe requests being answered now (for `/in-flight`).
static IN_FLIGHT: AtomicU64 = AtomicU64::new(0);

/// Counts a request in [`IN_FLIGHT`] until dropped.
struct InFlight;

impl InFlight {
    fn enter() -> InFlight {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How many times a request arrived while another was active.
static OVERLAPS: AtomicU64 = AtomicU64::new(0);

/// Exits with code 1 (leaving the marker), unless a marker says it happened already.
fn crash_unless_marked() {
    if let Some(dir) = &env().marker_dir {
        let marker = dir.join(CRASH_MARKER);
        if marker.exists() {
            return;
        }
        if let Err(e) = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&marker, b"")) {
            eprintln!("rouse-testapp: cannot write {}: {e}", marker.display());
        }
    }
    eprintln!("rouse-testapp: crashing on the first request as asked");
    std::process::exit(1);
}

/// Marks a request active (for `FAIL_ON_CONCURRENCY`) until dropped.
struct Active {
    overlaps_before: u64,
}

impl Active {
    fn enter() -> Active {
        let overlaps_before = OVERLAPS.load(Ordering::SeqCst);
        if ACTIVE.fetch_add(1, Ordering::SeqCst) > 0 {
            OVERLAPS.fetch_add(1, Ordering::SeqCst);
        }
        Active { overlaps_before }
    }

    /// Whether another request overlapped this one so far.
    fn overlapped(&self) -> bool {
        OVERLAPS.load(Ordering::SeqCst) != self.overlaps_before
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Options {
    h2c: bool,
    print: Vec<String>,
    exit_immediately: Option<i32>,
    startup_delay: Duration,
}

fn parse_args() -> Result<Options, String> {
    let mut opts = Options {
        h2c: false,
        print: Vec::new(),
        exit_immediately: None,
        startup_delay: Duration::ZERO,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--h2c" => opts.h2c = true,
            "--print" => opts.print.push(value("--print")?),
            "--exit-immediately" => {
                let v = value("--exit-immediately")?;
                opts.exit_immediately =
                    Some(v.parse().map_err(|_| format!("bad exit code {v:?}"))?);
            }
            "--startup-delay" => {
                let v = value("--startup-delay")?;
                let ms = v.parse().map_err(|_| format!("bad delay {v:?}"))?;
                opts.startup_delay = Duration::from_millis(ms);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(opts)
}

fn main() {
    roles::mark_started();
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("rouse-testapp: {e}");
            std::process::exit(2);
        }
    };
    for line in &opts.print {
        println!("{line}");
    }
    if let Some(code) = opts.exit_immediately {
        eprintln!("rouse-testapp: exiting with code {code} as asked");
        std::process::exit(code);
    }
    let port: u16 = match std::env::var("PORT")
        .unwrap_or_else(|_| "8080".into())
        .parse()
    {
        Ok(p) => p,
        Err(_) => {
            eprintln!("rouse-testapp: PORT is not a port number");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(serve(port, opts));
}

async fn serve(port: u16, opts: Options) {
    tokio::time::sleep(opts.startup_delay).await;
    // In a container the app must listen on all addresses (`LISTEN_HOST=0.0.0.0`).
    let host = std::env::var("LISTEN_HOST").unwrap_or_else(|_| "127.0.0.1".to_string());
    let listener = match TcpListener::bind((host.as_str(), port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("rouse-testapp: cannot listen on {host}:{port}: {e}");
            std::process::exit(1);
        }
    };
    let proto = if opts.h2c { "h2c" } else { "http/1.1" };
    println!("rouse-testapp listening on {host}:{port} ({proto})");
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let h2c = opts.h2c;
        tokio::spawn(async move {
            let io = TokioIo::new(tcp);
            let svc = service_fn(handle);
            let res = if h2c {
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, svc)
                    .await
            } else {
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .with_upgrades()
                    .await
            };
            if let Err(e) = res {
                eprintln!("rouse-testapp: connection error: {e}");
            }
        });
    }
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect()
}

fn num(q: &BTreeMap<String, String>, key: &str, default: u64) -> u64 {
    q.get(key).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn full(status: StatusCode, content_type: &str, text: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(text.into())
            .map_err(|n| match n {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

fn json(value: serde_json::Value) -> Response<Body> {
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    full(StatusCode::OK, "application/json", text)
}

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let probe = req
        .headers()
        .get(header::USER_AGENT)
        .is_some_and(|ua| ua.as_bytes().starts_with(b"kube-probe/"));
    let first = !probe && !HAD_REQUEST.swap(true, Ordering::SeqCst);
    if first && (env().crash_on_first_request || req.uri().path() == "/crash-on-first-request") {
        crash_unless_marked();
    }
    let active = (env().fail_on_concurrency && !probe).then(Active::enter);
    let _in_flight = (!probe).then(InFlight::enter);
    let q = query(&req);
    let sleep = num(&q, "sleep", 0);
    if sleep > 0 {
        tokio::time::sleep(Duration::from_millis(sleep)).await;
    }
    if let Some(mib) = q.get("bloat").and_then(|v| v.parse().ok()) {
        let touched = tokio::task::spawn_blocking(move || roles::bloat(mib))
            .await
            .unwrap_or(0);
        if !q.contains_key("prime") {
            return Ok(full(
                StatusCode::OK,
                "text/plain",
                format!("Allocated {mib} MiB ({touched} pages).\n"),
            ));
        }
    }
    if let Some(n) = q.get("prime").and_then(|v| v.parse().ok()) {
        let p = tokio::task::spawn_blocking(move || roles::largest_prime_below(n))
            .await
            .ok()
            .flatten();
        let text = match p {
            Some(p) => format!("The largest prime less than {n} is {p}.\n"),
            None => format!("There are no primes smaller than {n}.\n"),
        };
        return Ok(full(StatusCode::OK, "text/plain", text));
    }
    let resp = answer(req, &q).await;
    if active.is_some_and(|a| a.overlapped()) {
        return Ok(full(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            "concurrent requests detected\n",
        ));
    }
    Ok(resp)
}

async fn answer(mut req: Request<Incoming>, q: &BTreeMap<String, String>) -> Response<Body> {
    match req.uri().path() {
        "/ws" => match ws::accept_key(req.headers()) {
            Ok(accept) => {
                tokio::spawn(ws::echo(hyper::upgrade::on(&mut req)));
                let mut resp = Response::new(Empty::new().map_err(|n| match n {}).boxed_unsync());
                *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                let h = resp.headers_mut();
                h.insert(
                    header::UPGRADE,
                    header::HeaderValue::from_static("websocket"),
                );
                h.insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("Upgrade"),
                );
                h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
                // Which workload answered (for splits over WebSockets).
                if let Some(v) = std::env::var("MESSAGE")
                    .ok()
                    .and_then(|m| header::HeaderValue::from_str(&m).ok())
                {
                    h.insert("x-message", v);
                }
                resp
            }
            Err(why) => full(
                StatusCode::BAD_REQUEST,
                "text/plain; charset=utf-8",
                format!("{why}\n"),
            ),
        },
        path if grpc::is_method(path) => grpc::serve(req).await,
        "/readyz" | "/healthz/readiness" | "/healthz/liveness" => roles::readyz(),
        "/toggle-ready" => roles::switch_ready(true, q),
        "/start-failing" => roles::switch_ready(false, q),
        "/whoami" => roles::whoami(),
        "/in-flight" => full(
            StatusCode::OK,
            "text/plain",
            format!("{}\n", IN_FLIGHT.load(Ordering::SeqCst).saturating_sub(1)),
        ),
        "/timeout" => roles::timeout(q).await,
        "/runtime" => roles::runtime().await,
        "/env" => {
            let env: BTreeMap<String, String> = std::env::vars().collect();
            json(serde_json::json!(env))
        }
        "/headers" => {
            let mut headers = BTreeMap::<String, String>::new();
            for (k, v) in req.headers() {
                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                headers
                    .entry(k.as_str().to_string())
                    .and_modify(|e| {
                        e.push_str(", ");
                        e.push_str(&v);
                    })
                    .or_insert(v);
            }
            let host = req
                .headers()
                .get(header::HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
                .or_else(|| req.uri().authority().map(|a| a.to_string()))
                .unwrap_or_default();
            json(serde_json::json!({
                "method": req.method().as_str(),
                "host": host,
                "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                "version": format!("{:?}", req.version()),
                "headers": headers,
            }))
        }
        "/stream" => {
            let chunks = num(q, "chunks", 5);
            let interval = Duration::from_millis(num(q, "interval", 100));
            let stream = futures_util::stream::unfold(0, move |i| async move {
                if i >= chunks {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(interval).await;
                }
                let frame = Frame::data(Bytes::from(format!("chunk {i}\n")));
                Some((Ok::<_, hyper::Error>(frame), i + 1))
            });
            let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            resp
        }
        "/echo" => Response::new(req.into_body().boxed_unsync()),
        "/status" => {
            let code = StatusCode::from_u16(num(q, "code", 200) as u16).unwrap_or(StatusCode::OK);
            let mut resp = Response::new(Empty::new().map_err(|n| match n {}).boxed_unsync());
            *resp.status_mut() = code;
            resp
        }
        "/exit" => {
            let code = num(q, "code", 0) as i32;
            // Exit once the answer had a moment to leave.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                std::process::exit(code);
            });
            full(
                StatusCode::OK,
                "text/plain",
                format!("exiting with code {code}\n"),
            )
        }
        _ => {
            let msg = std::env::var("MESSAGE").unwrap_or_else(|_| DEFAULT_MESSAGE.to_string());
            full(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                format!("{msg}\n"),
            )
        }
    }
}

//! Test backends: real hyper servers standing in for queue-proxies, instrumented.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rouse_http::{Body, BoxError, boxed, empty};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

pub const BOUND: Duration = Duration::from_secs(10);
pub const NS: &str = "default";
pub const HOST: &str = "hello.default.example.com";

/// What a test backend has seen.
#[derive(Default)]
pub struct Seen {
    /// Answers 200 `queue` to probes when set, 503 otherwise.
    pub ready: AtomicBool,
    pub probes: AtomicUsize,
    /// Non-probe requests received.
    pub served: AtomicUsize,
    pub current: AtomicUsize,
    pub max: AtomicUsize,
    /// Connections accepted, and those of them still open.
    pub accepted: AtomicUsize,
    pub open: AtomicUsize,
}

/// A backend answering its name on `/`, its request headers on `/headers` (then its version),
/// sleeping on `/slow?ms=N`, hanging on `/hang`, and trickling a body on `/trickle` (one
/// chunk, then another after 5 s). Every answer but a probe's names the connection it came
/// on in `x-conn` (numbered from 1).
pub struct TestBackend {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    task: JoinHandle<()>,
}

impl TestBackend {
    pub async fn start(name: &'static str, ready: bool) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        seen.ready.store(ready, Ordering::SeqCst);
        let s = seen.clone();
        let task = tokio::spawn(async move {
            // Connections live in this set: aborting the task closes them all.
            let mut conns = JoinSet::new();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let s = s.clone();
                let conn = s.accepted.fetch_add(1, Ordering::SeqCst) + 1;
                s.open.fetch_add(1, Ordering::SeqCst);
                conns.spawn(async move {
                    let seen = s.clone();
                    let svc = service_fn(move |req| handle(name, conn, seen.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                    s.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        TestBackend {
            name,
            addr,
            seen,
            task,
        }
    }

    /// Stops listening and closes every connection: the instance is gone.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    pub fn set_ready(&self, ready: bool) {
        self.seen.ready.store(ready, Ordering::SeqCst);
    }

    pub fn served(&self) -> usize {
        self.seen.served.load(Ordering::SeqCst)
    }

    pub fn probes(&self) -> usize {
        self.seen.probes.load(Ordering::SeqCst)
    }

    pub fn max_concurrency(&self) -> usize {
        self.seen.max.load(Ordering::SeqCst)
    }

    pub fn accepted(&self) -> usize {
        self.seen.accepted.load(Ordering::SeqCst)
    }

    pub fn open(&self) -> usize {
        self.seen.open.load(Ordering::SeqCst)
    }
}

async fn handle(
    name: &'static str,
    conn: usize,
    seen: Arc<Seen>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if req.headers().get("k-network-probe").is_some() {
        seen.probes.fetch_add(1, Ordering::SeqCst);
        let resp = if seen.ready.load(Ordering::SeqCst) {
            Response::new(boxed(Full::new(Bytes::from("queue"))))
        } else {
            let mut r = Response::new(boxed(Full::new(Bytes::from("not ready"))));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        };
        return Ok(resp);
    }
    seen.served.fetch_add(1, Ordering::SeqCst);
    let now = seen.current.fetch_add(1, Ordering::SeqCst) + 1;
    seen.max.fetch_max(now, Ordering::SeqCst);
    let body: Body = match req.uri().path() {
        "/headers" => {
            let mut out = format!("backend: {name}\n");
            for (k, v) in req.headers() {
                out.push_str(&format!("{k}: {}\n", v.to_str().unwrap()));
            }
            out.push_str(&format!("version: {:?}\n", req.version()));
            boxed(Full::new(Bytes::from(out)))
        }
        // The routes below play slow, hanging and trickling apps: their sleeps are the app's
        // behaviour under test, not waits for a condition.
        "/slow" => {
            let ms = req.uri().query().and_then(|q| q.strip_prefix("ms="));
            let ms = ms.and_then(|m| m.parse().ok()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            boxed(Full::new(Bytes::from(name)))
        }
        "/hang" => {
            tokio::time::sleep(BOUND).await;
            empty()
        }
        "/trickle" => {
            let chunks = futures_util::stream::unfold(0, |i| async move {
                match i {
                    0 => Some((Ok::<_, BoxError>(Frame::data(Bytes::from("first "))), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        Some((Ok(Frame::data(Bytes::from("second"))), 2))
                    }
                    _ => None,
                }
            });
            boxed(StreamBody::new(chunks))
        }
        _ => boxed(Full::new(Bytes::from(name))),
    };
    seen.current.fetch_sub(1, Ordering::SeqCst);
    let mut resp = Response::new(body);
    resp.headers_mut().insert("x-conn", conn.into());
    Ok(resp)
}

/// A GET for `path` as the gateway would hand it over.
pub fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header("host", HOST)
        .body(empty())
        .unwrap()
}

/// Status, body text (or `Err` if the body failed) and the `K-Cold-Start` header.
pub async fn read(resp: Response<Body>) -> (StatusCode, Result<String, String>, Option<String>) {
    let status = resp.status();
    let cold = resp
        .headers()
        .get("k-cold-start")
        .map(|v| v.to_str().unwrap().to_string());
    let body = match resp.into_body().collect().await {
        Ok(b) => Ok(String::from_utf8_lossy(&b.to_bytes()).into_owned()),
        Err(e) => Err(e.to_string()),
    };
    (status, body, cold)
}

/// Polls `cond` until it holds, failing after [`BOUND`].
pub async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        // The poll interval of this bounded wait.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

//! An instrumented app on loopback and client helpers for the queue-proxy's tests.
#![allow(dead_code)] // each test file uses its own part

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rouse_http::{Body, boxed, full};
use rouse_queue::QueueProxy;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

// The engine's raw-socket clients and bounded wait (one copy for both crates' tests).
#[path = "../../../rouse-http/tests/common/mod.rs"]
mod engine;
pub use engine::*;

/// What the app has seen.
#[derive(Default)]
pub struct Counts {
    /// Requests in the app now.
    pub current: AtomicUsize,
    /// The most ever in the app at once.
    pub max: AtomicUsize,
    /// Requests that reached the app.
    pub seen: AtomicUsize,
}

/// Counts a request as in the app until dropped (also when the queue-proxy gives up on it).
struct InApp(Arc<Counts>);

impl InApp {
    fn enter(c: &Arc<Counts>) -> InApp {
        c.seen.fetch_add(1, Ordering::SeqCst);
        let now = c.current.fetch_add(1, Ordering::SeqCst) + 1;
        c.max.fetch_max(now, Ordering::SeqCst);
        InApp(c.clone())
    }
}

impl Drop for InApp {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An app that answers:
/// - `/hold`: waits until the test [`App::release`]s it, then `held`;
/// - `/sleep?ms=N`: `slept` after N ms;
/// - `/drip?n=K&every=MS`: the head and `0\n` at once, then `1\n` … `K-1\n`, MS apart;
/// - anything else: `hello`.
///
/// Every request counts in [`Counts`] until its handler returns (or is dropped).
pub struct App {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
    gate: Arc<Semaphore>,
}

impl App {
    pub async fn start() -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let gate = Arc::new(Semaphore::new(0));
        let (c, g) = (counts.clone(), gate.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (c, g) = (c.clone(), g.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, c.clone(), g.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        App { addr, counts, gate }
    }

    /// Lets `n` held requests answer.
    pub fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }

    pub fn current(&self) -> usize {
        self.counts.current.load(Ordering::SeqCst)
    }

    pub fn max(&self) -> usize {
        self.counts.max.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> usize {
        self.counts.seen.load(Ordering::SeqCst)
    }
}

async fn handle(
    req: Request<Incoming>,
    counts: Arc<Counts>,
    gate: Arc<Semaphore>,
) -> Result<Response<Body>, Infallible> {
    let query: HashMap<String, u64> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect();
    let arg = |k: &str| query.get(k).copied().unwrap_or(0);
    let _in_app = InApp::enter(&counts);
    let resp = match req.uri().path() {
        "/hold" => {
            gate.acquire().await.unwrap().forget();
            Response::new(full("held"))
        }
        "/sleep" => {
            tokio::time::sleep(Duration::from_millis(arg("ms"))).await;
            Response::new(full("slept"))
        }
        "/drip" => {
            let (n, every) = (arg("n"), Duration::from_millis(arg("every")));
            let s = futures_util::stream::unfold(0, move |i| async move {
                if i >= n {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(every).await;
                }
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{i}\n")))),
                    i + 1,
                ))
            });
            Response::new(boxed(StreamBody::new(s)))
        }
        _ => Response::new(full("hello")),
    };
    Ok(resp)
}

pub fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn get(addr: SocketAddr, path: &str) -> Request<Body> {
    Request::get(format!("http://{addr}{path}"))
        .body(full(""))
        .unwrap()
}

/// Sends a GET and reads the whole answer.
pub async fn fetch(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    text(client().request(get(addr, path)).await.unwrap()).await
}

pub async fn text(resp: Response<Incoming>) -> (StatusCode, String) {
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The status, the body bytes that arrived, and whether the body ended cleanly.
pub async fn partial(resp: Response<Incoming>) -> (StatusCode, String, bool) {
    let status = resp.status();
    let mut body = resp.into_body();
    let mut got = Vec::new();
    loop {
        match body.frame().await {
            None => return (status, String::from_utf8_lossy(&got).into_owned(), true),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    got.extend_from_slice(&d);
                }
            }
            Some(Err(_)) => return (status, String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

pub async fn wait_ready(qp: &QueueProxy) {
    let mut rx = qp.ready();
    tokio::time::timeout(BOUND, rx.wait_for(|r| *r))
        .await
        .expect("app not ready in time")
        .unwrap();
}

//! A scripted Kubernetes API server on loopback: each test lists the requests it expects
//! (method and exact path; the query is not matched) and the answers, the way kube's mock
//! service is scripted, but over a real socket and through kube's real client. A request off
//! script, or past its end, gets a 500.
#![allow(dead_code)]

pub mod fake;
pub mod registry;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rouse_kube::store::KubeStore;
use serde_json::{Value, json};

/// One expected request (method and exact path; the query is not matched) and the answer.
pub struct Step {
    method: &'static str,
    path: String,
    status: u16,
    /// The JSON answer (a JSON string is sent as raw text: see `watch_step`).
    body: Value,
    raw: Option<String>,
}

pub fn step(method: &'static str, path: &str, status: u16, body: Value) -> Step {
    Step {
        method,
        path: path.to_string(),
        status,
        body,
        raw: None,
    }
}

/// A watch answer: one JSON event per line.
pub fn watch_step(path: &str, events: &[Value]) -> Step {
    let mut text = String::new();
    for e in events {
        text.push_str(&e.to_string());
        text.push('\n');
    }
    Step {
        raw: Some(text),
        ..step("GET", path, 200, Value::Null)
    }
}

/// A request the server saw: method, path with query, JSON body (Null when empty).
pub type Seen = (String, String, Value);

/// The content type of each request the server saw, in order.
pub type ContentTypes = Arc<Mutex<Vec<String>>>;

pub struct Scripted {
    pub store: KubeStore,
    pub client: kube::Client,
    pub content_types: ContentTypes,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub left: Arc<Mutex<VecDeque<Step>>>,
}

impl Scripted {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    pub fn assert_done(&self) {
        assert!(
            self.left.lock().unwrap().is_empty(),
            "the client stopped before the script ended; saw {:?}",
            self.seen()
        );
    }
}

pub async fn serve(script: Vec<Step>) -> Scripted {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let left = Arc::new(Mutex::new(VecDeque::from(script)));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let content_types: ContentTypes = Arc::default();
    let (l, s, ct) = (left.clone(), seen.clone(), content_types.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (l, s, ct) = (l.clone(), s.clone(), ct.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (l, s, ct) = (l.clone(), s.clone(), ct.clone());
                    async move {
                        let method = req.method().to_string();
                        let content_type = req
                            .headers()
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        ct.lock().unwrap().push(content_type);
                        let bare_path = req.uri().path().to_string();
                        let path = req
                            .uri()
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default();
                        let bytes = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        s.lock().unwrap().push((method.clone(), path.clone(), body));
                        let next = l.lock().unwrap().pop_front();
                        let (status, body) = match next {
                            Some(st) if st.method == method && bare_path == st.path => {
                                (st.status, st.raw.map(Value::String).unwrap_or(st.body))
                            }
                            Some(st) => (
                                500,
                                json!({"kind": "Status", "status": "Failure", "code": 500,
                                       "message": format!("script wanted {} {}, got {method} {path}", st.method, st.path)}),
                            ),
                            None => (
                                500,
                                json!({"kind": "Status", "status": "Failure", "code": 500, "message": "script ended"}),
                            ),
                        };
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(match body {
                                    // Raw text (a watch stream) goes as is.
                                    Value::String(text) => text,
                                    other => other.to_string(),
                                })))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    Scripted {
        store: KubeStore::new(client.clone()),
        client,
        content_types,
        seen,
        left,
    }
}

pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
           "reason": reason, "message": message})
}

/// Polls `cond` until it holds, failing the test after 20 s.
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client of an API server that answers every request with `answer(method, path, body)`
/// (for checks whose requests are many and unordered).
pub async fn answering<F>(answer: F) -> kube::Client
where
    F: Fn(&str, &str, &Value) -> (u16, Value) + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let answer = answer.clone();
                    async move {
                        let method = req.method().to_string();
                        let path = req.uri().path().to_string();
                        let bytes = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        let (status, reply) = answer(&method, &path, &body);
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(reply.to_string())))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

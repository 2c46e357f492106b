//! A small stateful Kubernetes API server on loopback, for code that runs informers (several
//! lists and watches at once, in no fixed order) where a script cannot say what comes next.
//! It keeps objects per resource, hands out increasing resourceVersions, refuses stale ones
//! with 409, streams watches, serves `/status` and `/scale`, and takes server-side applies
//! (the body replaces the object but for its status and the labels the applier does not own,
//! i.e. did not set in its last apply; a new spec bumps the generation). Every request is
//! recorded.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody as BoxBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// `(resource path without namespace, e.g. "apis/apps/v1/deployments", namespace, name)`.
type ObjKey = (String, String, String);

#[derive(Default)]
pub struct State {
    pub rv: u64,
    pub objects: BTreeMap<ObjKey, Value>,
    /// Method and path (with query) of every request.
    pub seen: Vec<(String, String)>,
    /// Answer every request 500 while set (the API server failing; kube's client retries 503s itself).
    pub down: bool,
    /// Answer this many PUTs 409 Conflict before taking one.
    pub conflicts: usize,
    /// Every event, for watches that start from an older resourceVersion.
    history: Vec<(String, u64, Value)>,
    /// The label keys each object's last server-side apply set (the applier owns them).
    applied_labels: BTreeMap<ObjKey, Vec<String>>,
}

#[derive(Clone)]
pub struct Fake {
    pub state: Arc<Mutex<State>>,
    events: broadcast::Sender<(String, u64, Value)>,
    pub client: kube::Client,
}

struct Parsed {
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse(path: &str) -> Option<Parsed> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let prefix = match *segs.first()? {
        "api" => 2,
        "apis" => 3,
        _ => return None,
    };
    if segs.len() <= prefix {
        return None;
    }
    let base = segs[..prefix].join("/");
    let mut rest = &segs[prefix..];
    let mut namespace = None;
    if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        namespace = Some(rest[1].to_string());
        rest = &rest[2..];
    }
    Some(Parsed {
        resource: format!("{base}/{}", rest.first()?),
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
    })
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
           "reason": reason, "message": message})
}

impl Fake {
    pub async fn start() -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Fake::start_on(listener)
    }

    /// Serves on `listener` (an address clients were given before the server came up).
    pub fn start_on(listener: tokio::net::TcpListener) -> Fake {
        let addr = listener.local_addr().unwrap();
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let fake = Fake {
            state: Arc::default(),
            events: broadcast::channel(1024).0,
            client: kube::Client::try_from(config).unwrap(),
        };
        let f = fake.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let f = f.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let f = f.clone();
                        async move { Ok::<_, Infallible>(f.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        fake
    }

    /// Stores an object as another client would (kubectl, the kubelet), emitting its event.
    pub fn put(&self, resource: &str, mut obj: Value) -> Value {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        obj["metadata"]["namespace"] = ns.clone().into();
        obj["metadata"]["resourceVersion"] = st.rv.to_string().into();
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = format!("uid-{}", st.rv).into();
        }
        if obj["metadata"]["generation"].is_null() {
            obj["metadata"]["generation"] = 1.into();
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let key = (resource.to_string(), ns, name);
        let kind = if st.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        st.objects.insert(key, obj.clone());
        let ev = json!({"type": kind, "object": obj.clone()});
        let rv = st.rv;
        st.history.push((resource.to_string(), rv, ev.clone()));
        let _ = self.events.send((resource.to_string(), rv, ev));
        obj
    }

    /// Removes an object as another client would, emitting its event.
    pub fn remove(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let mut st = self.state.lock().unwrap();
        let key = (
            resource.to_string(),
            namespace.to_string(),
            name.to_string(),
        );
        st.applied_labels.remove(&key);
        let obj = st.objects.remove(&key)?;
        st.rv += 1;
        let mut gone = obj.clone();
        gone["metadata"]["resourceVersion"] = st.rv.to_string().into();
        let ev = json!({"type": "DELETED", "object": gone});
        let rv = st.rv;
        st.history.push((resource.to_string(), rv, ev.clone()));
        let _ = self.events.send((resource.to_string(), rv, ev));
        Some(obj)
    }

    pub fn object(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .unwrap()
            .objects
            .get(&(
                resource.to_string(),
                namespace.to_string(),
                name.to_string(),
            ))
            .cloned()
    }

    pub fn objects(&self, resource: &str) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .objects
            .iter()
            .filter(|((r, _, _), _)| r == resource)
            .map(|(_, o)| o.clone())
            .collect()
    }

    pub fn seen(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().seen.clone()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let bytes = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        self.state
            .lock()
            .unwrap()
            .seen
            .push((method.clone(), format!("{path}?{query}")));
        if self.state.lock().unwrap().down {
            return reply(500, status(500, "InternalError", "down"));
        }
        let Some(p) = parse(&path) else {
            return reply(
                404,
                status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            );
        };
        let body: Value = serde_json::from_slice(&bytes)
            .or_else(|_| serde_saphyr::from_slice(&bytes))
            .unwrap_or(Value::Null);
        let ns = p.namespace.clone().unwrap_or_default();
        match (method.as_str(), &p.name) {
            ("GET", None) if query.contains("watch=true") || query.contains("watch=1") => {
                let resource = p.resource.clone();
                let from: u64 = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("resourceVersion="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                // Subscribed before the history is read: nothing falls between the two.
                let rx = self.events.subscribe();
                let replay: Vec<(String, u64, Value)> = self
                    .state
                    .lock()
                    .unwrap()
                    .history
                    .iter()
                    .filter(|(r, rv, _)| *r == resource && *rv > from)
                    .cloned()
                    .collect();
                let last = replay.last().map_or(from, |(_, rv, _)| *rv);
                let replayed = futures_util::stream::iter(replay.into_iter().map(|(_, _, ev)| {
                    Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{ev}\n"))))
                }));
                let live = futures_util::stream::unfold(rx, move |mut rx| {
                    let resource = resource.clone();
                    async move {
                        loop {
                            match rx.recv().await {
                                Ok((r, rv, ev)) if r == resource && rv > last => {
                                    let line = format!("{ev}\n");
                                    return Some((
                                        Ok::<_, Infallible>(Frame::data(Bytes::from(line))),
                                        rx,
                                    ));
                                }
                                Ok(_) => continue,
                                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                                Err(_) => return None,
                            }
                        }
                    }
                });
                Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(BodyExt::boxed_unsync(StreamBody::new(
                        replayed.chain(live).boxed(),
                    )))
                    .unwrap()
            }
            ("GET", None) => {
                let st = self.state.lock().unwrap();
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|((r, n, _), _)| {
                        *r == p.resource && (p.namespace.is_none() || *n == ns)
                    })
                    .map(|(_, o)| o.clone())
                    .collect();
                reply(
                    200,
                    json!({"kind": "List", "apiVersion": "v1",
                           "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
                )
            }
            ("GET", Some(name)) => match self.object(&p.resource, &ns, name) {
                Some(o) if p.sub.as_deref() == Some("scale") => reply(200, scale_of(&o)),
                Some(o) => reply(200, o),
                None => reply(404, status(404, "NotFound", &format!("{name} not found"))),
            },
            ("POST", None) => {
                let mut obj = body;
                if obj["metadata"]["name"].as_str().unwrap_or("").is_empty() {
                    let prefix = obj["metadata"]["generateName"].as_str().unwrap_or("x");
                    let n = self.state.lock().unwrap().rv + 1;
                    obj["metadata"]["name"] = format!("{prefix}{n:05}").into();
                }
                obj["metadata"]["namespace"] = ns.clone().into();
                let name = obj["metadata"]["name"].as_str().unwrap().to_string();
                if self.object(&p.resource, &ns, &name).is_some() {
                    return reply(
                        409,
                        status(409, "AlreadyExists", &format!("{name} already exists")),
                    );
                }
                reply(201, self.put(&p.resource, obj))
            }
            ("PUT", Some(name)) => {
                let Some(current) = self.object(&p.resource, &ns, name) else {
                    return reply(404, status(404, "NotFound", &format!("{name} not found")));
                };
                {
                    let mut st = self.state.lock().unwrap();
                    if st.conflicts > 0 {
                        st.conflicts -= 1;
                        return reply(409, status(409, "Conflict", "the object has been modified"));
                    }
                }
                let given = body["metadata"]["resourceVersion"].as_str().unwrap_or("");
                if given.is_empty() || given != current["metadata"]["resourceVersion"] {
                    return reply(
                        409,
                        status(
                            409,
                            "Conflict",
                            "the object has been modified; please apply your changes to the latest version and try again",
                        ),
                    );
                }
                let mut next = current.clone();
                match p.sub.as_deref() {
                    Some("status") => next["status"] = body["status"].clone(),
                    Some("scale") => next["spec"]["replicas"] = body["spec"]["replicas"].clone(),
                    _ => {
                        // The whole object is replaced, but for its status (a subresource).
                        next = body.clone();
                        match current.get("status") {
                            Some(st) => next["status"] = st.clone(),
                            None => {
                                if let Some(m) = next.as_object_mut() {
                                    m.remove("status");
                                }
                            }
                        }
                        if next["spec"] != current["spec"] {
                            let g = current["metadata"]["generation"].as_i64().unwrap_or(1);
                            next["metadata"]["generation"] = (g + 1).into();
                        }
                    }
                }
                let stored = self.put(&p.resource, next);
                if p.sub.as_deref() == Some("scale") {
                    return reply(200, scale_of(&stored));
                }
                reply(200, stored)
            }
            ("PATCH", Some(name)) => {
                // Server-side apply: the applied object replaces what is stored.
                let mut obj = body;
                let current = self.object(&p.resource, &ns, name);
                if p.sub.as_deref() == Some("scale") {
                    let Some(mut cur) = current else {
                        return reply(404, status(404, "NotFound", &format!("{name} not found")));
                    };
                    cur["spec"]["replicas"] = obj["spec"]["replicas"].clone();
                    let stored = self.put(&p.resource, cur);
                    return reply(200, scale_of(&stored));
                }
                let key = (p.resource.clone(), ns.clone(), name.clone());
                if p.sub.is_none() {
                    keep_others_labels(
                        &mut self.state.lock().unwrap(),
                        &key,
                        &mut obj,
                        current.as_ref(),
                    );
                }
                if let Some(cur) = &current {
                    obj["metadata"]["uid"] = cur["metadata"]["uid"].clone();
                    if p.sub.as_deref() == Some("status") {
                        let mut next = cur.clone();
                        next["status"] = obj["status"].clone();
                        obj = next;
                    } else {
                        // As the API server does: the status stays (a subresource) and a new
                        // spec is a new generation.
                        let g = cur["metadata"]["generation"].as_i64().unwrap_or(1);
                        let changed = obj["spec"] != cur["spec"];
                        obj["metadata"]["generation"] = (g + i64::from(changed)).into();
                        if let Some(st) = cur.get("status") {
                            obj["status"] = st.clone();
                        }
                    }
                }
                obj["metadata"]["name"] = name.clone().into();
                obj["metadata"]["namespace"] = ns.clone().into();
                reply(200, self.put(&p.resource, obj))
            }
            ("DELETE", Some(name)) => match self.remove(&p.resource, &ns, name) {
                Some(o) => reply(200, o),
                None => reply(404, status(404, "NotFound", &format!("{name} not found"))),
            },
            _ => reply(405, status(405, "MethodNotAllowed", "not supported here")),
        }
    }
}

/// As server-side apply does for labels: those on the stored object that the applier did not
/// set in its last apply (another manager's, a user's) stay; those it set before and leaves out
/// now go. Records what this apply sets.
fn keep_others_labels(st: &mut State, key: &ObjKey, obj: &mut Value, current: Option<&Value>) {
    let applied: Vec<String> = obj["metadata"]["labels"]
        .as_object()
        .map(|l| l.keys().cloned().collect())
        .unwrap_or_default();
    let owned_before = st
        .applied_labels
        .insert(key.clone(), applied)
        .unwrap_or_default();
    let Some(stored) = current.and_then(|c| c["metadata"]["labels"].as_object()) else {
        return;
    };
    for (k, v) in stored {
        if !owned_before.contains(k) && obj["metadata"]["labels"].get(k).is_none() {
            if !obj["metadata"]["labels"].is_object() {
                obj["metadata"]["labels"] = json!({});
            }
            obj["metadata"]["labels"][k] = v.clone();
        }
    }
}

fn scale_of(o: &Value) -> Value {
    json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
           "metadata": {"name": o["metadata"]["name"], "namespace": o["metadata"]["namespace"],
                        "resourceVersion": o["metadata"]["resourceVersion"]},
           "spec": {"replicas": o["spec"]["replicas"]}})
}

fn reply(code: u16, body: Value) -> Response<BoxBody<Bytes, Infallible>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(BodyExt::boxed_unsync(Full::new(Bytes::from(
            body.to_string(),
        ))))
        .unwrap()
}

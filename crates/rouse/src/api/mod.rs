//! The HTTP API on `--api-listen`: Kubernetes-style paths over the store, for every kind
//! (`/apis/{group}/{version}/namespaces/{ns}/{plural}[/{name}]`, plus cluster-wide lists).
//! Writes of the user-facing kinds go through admission (strict decoding, Knative's defaulting
//! and validation); the internal kinds are read-only here, since only the controller writes
//! them. Failures are Kubernetes `Status` objects. `/healthz` and `/metrics` sit beside.
//! Every request but the health checks carries the API token (see [`auth`]), and every request's
//! `Host` must name this API.

pub mod admission;
pub mod auth;
pub mod body;
pub mod paths;
pub mod status;
pub mod tls;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rouse_api::Kind;
use rouse_api::config::Config;
use rouse_store::{Store, StoreError};
use serde_json::{Value, json};

use admission::{Target, admit, read_only};
use paths::ApiPath;
pub use status::ApiError;
use status::{json_response, text_response};

/// What the API serves from: the store and the platform's config (for defaulting/validation).
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    /// The bearer token every request but the health checks must carry.
    pub token: Arc<str>,
}

/// The Prometheus text `/metrics` returns, rendered on each scrape.
pub type MetricsFn = Arc<dyn Fn() -> String + Send + Sync>;

struct Shared {
    state: ApiState,
    metrics: MetricsFn,
    hosts: auth::HostPolicy,
    /// Held from counting to storing a capped create, so concurrent creates cannot both slip
    /// under a limit.
    create_lock: tokio::sync::Mutex<()>,
}

/// How long in-flight requests may run on after shutdown is asked.
const DRAIN: Duration = Duration::from_secs(10);
/// How many times a replace without a resourceVersion retries a lost compare-and-swap.
const REPLACE_ATTEMPTS: usize = 5;

/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the API (plain HTTP) on `listener` until `shutdown` completes, then lets in-flight
/// requests finish (bounded) and returns.
pub async fn serve_api(
    listener: tokio::net::TcpListener,
    state: ApiState,
    metrics: MetricsFn,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    serve_api_tls(listener, state, metrics, None, &[], shutdown).await
}

/// [`serve_api`], over TLS when `tls` is given, also answering to the host names
/// `extra_hosts`.
pub async fn serve_api_tls(
    listener: tokio::net::TcpListener,
    state: ApiState,
    metrics: MetricsFn,
    tls: Option<Arc<rustls::ServerConfig>>,
    extra_hosts: &[String],
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let hosts = match listener.local_addr() {
        Ok(addr) => auth::HostPolicy::new(addr).with_names(extra_hosts),
        Err(e) => {
            tracing::error!(error = %e, "api: the listener has no address");
            return;
        }
    };
    let shared = Arc::new(Shared {
        state,
        metrics,
        hosts,
        create_lock: tokio::sync::Mutex::new(()),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let (shared, stop) = (shared.clone(), stop_rx.clone());
                    match &acceptor {
                        None => {
                            conns.spawn(serve_conn(stream, shared, stop));
                        }
                        Some(acceptor) => {
                            let accept = acceptor.accept(stream);
                            conns.spawn(async move {
                                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, accept).await {
                                    Ok(Ok(tls)) => serve_conn(tls, shared, stop).await,
                                    Ok(Err(e)) => {
                                        tracing::debug!(error = %e, "api: TLS handshake failed");
                                    }
                                    Err(_) => tracing::debug!("api: TLS handshake timed out"),
                                }
                            });
                        }
                    }
                }
                Err(e) => {
                    // Out of descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "api: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained =
        tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("api: requests still running after the drain period; aborting them");
        conns.abort_all();
    }
}

async fn serve_conn<S>(stream: S, shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "api: connection ended with an error");
            }
        }
        _ = async { let _ = stop.wait_for(|stopped| *stopped).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = match route(shared, req).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    };
    tracing::debug!(%method, %path, status = resp.status().as_u16(), "api request");
    resp
}

async fn route(shared: &Shared, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
    let method = req.method().clone();
    shared.hosts.check(req.uri(), req.headers())?;
    if let "/healthz" | "/readyz" | "/livez" = req.uri().path() {
        only_get(&method)?;
        return Ok(text_response(StatusCode::OK, "text/plain", "ok".into()));
    }
    auth::check_bearer(req.headers(), &shared.state.token)?;
    if req.uri().path() == "/metrics" {
        only_get(&method)?;
        return Ok(text_response(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            (shared.metrics)(),
        ));
    }
    let api_path = paths::parse(req.uri().path()).ok_or_else(ApiError::unknown_path)?;
    let state = &shared.state;
    match (api_path, method) {
        (ApiPath::Collection { kind, namespace }, Method::GET) => {
            list(state, kind, namespace).await
        }
        (
            ApiPath::Collection {
                kind,
                namespace: Some(ns),
            },
            Method::POST,
        ) => {
            if !kind.is_user_facing() {
                return Err(read_only(kind));
            }
            check_namespace(&ns)?;
            let (parts, body) = req.into_parts();
            let body = body::read_object(&parts.headers, body, body_deadline(state)).await?;
            let _capped = match kind {
                Kind::Service | Kind::Configuration | Kind::Revision => {
                    Some(shared.create_lock.lock().await)
                }
                _ => None,
            };
            create(state, kind, &ns, body).await
        }
        (
            ApiPath::Item {
                kind,
                namespace,
                name,
            },
            Method::GET,
        ) => {
            let store = state.store.clone();
            let (ns, n) = (namespace.clone(), name.clone());
            let obj = blocking(move || store.get(kind, &ns, &n))
                .await?
                .map_err(|e| ApiError::from_store(e, kind, &name))?;
            Ok(json_response(StatusCode::OK, &obj))
        }
        (
            ApiPath::Item {
                kind,
                namespace,
                name,
            },
            Method::PUT,
        ) => {
            if !kind.is_user_facing() {
                return Err(read_only(kind));
            }
            check_namespace(&namespace)?;
            let (parts, body) = req.into_parts();
            let body = body::read_object(&parts.headers, body, body_deadline(state)).await?;
            replace(state, kind, &namespace, &name, body).await
        }
        (
            ApiPath::Item {
                kind,
                namespace,
                name,
            },
            Method::DELETE,
        ) => {
            if !kind.is_user_facing() {
                return Err(read_only(kind));
            }
            let store = state.store.clone();
            let (ns, n) = (namespace.clone(), name.clone());
            let obj = blocking(move || store.delete(kind, &ns, &n))
                .await?
                .map_err(|e| ApiError::from_store(e, kind, &name))?;
            Ok(json_response(StatusCode::OK, &obj))
        }
        (
            ApiPath::Collection {
                namespace: None, ..
            },
            m,
        ) => Err(ApiError::method_not_allowed(format!(
            "{m} is not allowed on a list across namespaces; only GET is"
        ))),
        (ApiPath::Collection { .. }, m) => Err(ApiError::method_not_allowed(format!(
            "{m} is not allowed on a collection; use GET or POST"
        ))),
        (ApiPath::Item { .. }, m) => Err(ApiError::method_not_allowed(format!(
            "{m} is not allowed on an object; use GET, PUT or DELETE"
        ))),
    }
}

fn body_deadline(state: &ApiState) -> body::BodyDeadline {
    body::BodyDeadline::from_config(&state.config.rouse)
}

fn only_get(method: &Method) -> Result<(), ApiError> {
    if method == Method::GET || method == Method::HEAD {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed(format!(
            "{method} is not allowed here; use GET"
        )))
    }
}

/// Namespaces are RFC 1123 labels, as in Kubernetes.
fn check_namespace(ns: &str) -> Result<(), ApiError> {
    let ok = !ns.is_empty()
        && ns.len() <= 63
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !ns.starts_with('-')
        && !ns.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid namespace {ns:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', start and end with an alphanumeric character, and be at most 63 characters"
        )))
    }
}

/// Runs a (synchronous, disk-bound) store call off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("the store call failed: {e}")))
}

async fn list(
    state: &ApiState,
    kind: Kind,
    namespace: Option<String>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let store = state.store.clone();
    let (items, rv) = blocking(move || store.list(kind, namespace.as_deref()))
        .await?
        .map_err(|e| ApiError::from_store(e, kind, ""))?;
    let list = json!({
        "apiVersion": kind.api_version(),
        "kind": format!("{}List", kind.name()),
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    });
    Ok(json_response(StatusCode::OK, &list))
}

async fn create(
    state: &ApiState,
    kind: Kind,
    ns: &str,
    body: Value,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let target = Target {
        kind,
        namespace: ns,
        url_name: None,
    };
    let admitted = admit(target, body, None, &state.config)?;
    let name = admitted.object["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    check_quota(state, kind, ns, &name).await?;
    let store = state.store.clone();
    let created = blocking(move || store.create(kind, admitted.object))
        .await?
        .map_err(|e| ApiError::from_store(e, kind, &name))?;
    Ok(json_response(StatusCode::CREATED, &created))
}

/// Refuses a create of a Service, Configuration or Revision past `config-rouse`'s limits (403, worded as
/// Kubernetes words an exceeded ResourceQuota).
async fn check_quota(state: &ApiState, kind: Kind, ns: &str, name: &str) -> Result<(), ApiError> {
    let limits = &state.config.rouse;
    let checks = match kind {
        Kind::Service | Kind::Configuration => vec![
            (
                "max-services-per-namespace",
                limits.max_services_per_namespace,
                Some(ns.to_string()),
            ),
            ("max-services", limits.max_services, None),
        ],
        // Revisions made by Configurations are bounded by config-gc; this bounds those
        // created directly.
        Kind::Revision => vec![("max-revisions", limits.max_revisions, None)],
        _ => return Ok(()),
    };
    for (key, limit, namespace) in checks {
        let Some(limit) = limit else { continue };
        let store = state.store.clone();
        let used = blocking(move || store.list(kind, namespace.as_deref()))
            .await?
            .map_err(|e| ApiError::from_store(e, kind, name))?
            .0
            .len() as u64;
        if used >= limit {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "{} \"{name}\" is forbidden: exceeded quota: config-rouse, requested: {}=1, used: {}={used}, limited: {}={limit}",
                    paths::resource_name(kind),
                    kind.plural(),
                    kind.plural(),
                    key,
                ),
            )
            .for_object(kind, name));
        }
    }
    Ok(())
}

async fn replace(
    state: &ApiState,
    kind: Kind,
    ns: &str,
    name: &str,
    body: Value,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let target = Target {
        kind,
        namespace: ns,
        url_name: Some(name),
    };
    let client_rv = body
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    for _ in 0..REPLACE_ATTEMPTS {
        let store = state.store.clone();
        let (n, nsc) = (name.to_string(), ns.to_string());
        let old = blocking(move || store.get(kind, &nsc, &n))
            .await?
            .map_err(|e| ApiError::from_store(e, kind, name))?;
        let old_rv = old
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut admitted = admit(target, body.clone(), Some(&old), &state.config)?;
        if !client_rv.is_empty() && client_rv != old_rv {
            return Err(ApiError::conflict(
                kind,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        if admitted.unchanged {
            // A no-op write leaves the stored object (and its resourceVersion) as it was.
            return Ok(json_response(StatusCode::OK, &old));
        }
        // Validation ran against `old`, so write only over `old`: a concurrent change
        // makes the compare-and-swap fail and the replace start over.
        admitted.object["metadata"]["resourceVersion"] = Value::String(old_rv);
        let store = state.store.clone();
        match blocking(move || store.update(kind, admitted.object)).await? {
            Ok(updated) => return Ok(json_response(StatusCode::OK, &updated)),
            Err(StoreError::Conflict { .. }) if client_rv.is_empty() => continue,
            Err(e) => return Err(ApiError::from_store(e, kind, name)),
        }
    }
    Err(ApiError::conflict(
        kind,
        name,
        "the object kept changing while it was being replaced; try again",
    ))
}

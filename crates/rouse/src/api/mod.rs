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
pub mod configmaps;
pub mod deletion;
pub mod discovery;
pub mod namespaces;
pub mod openapi;
pub mod patch;
pub mod paths;
pub mod protobuf;
pub mod status;
pub mod subresource;
pub mod table;
pub mod tls;
pub mod watch;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rouse_api::Kind;
use rouse_api::config::SharedConfig;
use rouse_store::{Store, StoreError};
use serde_json::{Value, json};

use admission::{Target, admit, read_only};
use patch::PatchType;
use paths::ApiPath;
pub use status::ApiError;
use status::{json_response, text_response};
use watch::ListOptions;

/// The body of an API response: whole, or a watch's stream.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

fn whole(resp: Response<Full<Bytes>>) -> Response<Body> {
    resp.map(BodyExt::boxed_unsync)
}

/// What the API serves from: the store and the platform's config (for defaulting/validation).
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    /// The running config: read afresh per request, replaced by ConfigMap writes.
    pub config: SharedConfig,
    /// Knative's ConfigMaps as written (seeded from `--config`).
    pub configmaps: Arc<configmaps::ConfigMaps>,
    /// The namespaces created, changed or being deleted through the API.
    pub namespaces: Arc<namespaces::Namespaces>,
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
    /// Turns true at shutdown, ending open watches so the drain need not wait for them.
    stopping: tokio::sync::watch::Receiver<bool>,
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
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        state,
        metrics,
        hosts,
        create_lock: tokio::sync::Mutex::new(()),
        stopping: stop_rx.clone(),
    });
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

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = match route(shared, req).await {
        Ok(resp) => resp,
        Err(e) => whole(e.into_response()),
    };
    tracing::debug!(%method, %path, status = resp.status().as_u16(), "api request");
    resp
}

async fn route(shared: &Shared, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let method = req.method().clone();
    shared.hosts.check(req.uri(), req.headers())?;
    if let "/healthz" | "/readyz" | "/livez" = req.uri().path() {
        only_get(&method)?;
        return Ok(whole(text_response(
            StatusCode::OK,
            "text/plain",
            "ok".into(),
        )));
    }
    auth::check_bearer(req.headers(), &shared.state.token)?;
    let path = req.uri().path();
    if path == "/metrics" {
        only_get(&method)?;
        return Ok(whole(text_response(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            (shared.metrics)(),
        )));
    }
    if let Some(version) = discovery::wants_aggregated(req.headers())
        && let Some(doc) = discovery::aggregated(path, version)
    {
        only_get(&method)?;
        let mut resp = json_response(StatusCode::OK, &doc);
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_str(&discovery::aggregated_content_type(version))
                .expect("a static media type"),
        );
        return Ok(whole(resp));
    }
    if let Some(doc) = discovery::answer(path).or_else(|| openapi::answer(path)) {
        only_get(&method)?;
        return Ok(whole(json_response(StatusCode::OK, &doc)));
    }
    let as_table = table::wants_table(req.headers());
    if let Some(rest) = path.strip_prefix("/api/v1/") {
        return core(
            shared,
            rest.trim_end_matches('/').to_string(),
            req,
            as_table,
        )
        .await
        .map(whole);
    }
    let api_path = paths::parse(path).ok_or_else(ApiError::unknown_path)?;
    let opts = if method == Method::GET || method == Method::DELETE {
        ListOptions::parse(req.uri().query())?
    } else {
        ListOptions::default()
    };
    if opts.watch && method == Method::GET {
        let (kind, namespace, mut opts) = match api_path {
            ApiPath::Collection { kind, namespace } => (kind, namespace, opts),
            ApiPath::Item {
                kind,
                namespace,
                name,
            } => {
                // The old per-object watch path: a watch of that one name.
                let mut opts = opts;
                opts.fields.push(("metadata.name".into(), name, true));
                (kind, Some(namespace), opts)
            }
            ApiPath::Status { .. } => {
                return Err(ApiError::method_not_allowed(
                    "GET, PUT, PATCH",
                    "watch is not allowed on the status subresource; watch the object",
                ));
            }
        };
        opts.watch = true;
        let body = watch::start(
            shared.state.clone(),
            kind,
            namespace,
            opts,
            as_table,
            shared.stopping.clone(),
        );
        return Ok(Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.boxed_unsync())
            .expect("static response parts are valid"));
    }
    route_object(shared, api_path, req, opts, as_table)
        .await
        .map(whole)
}

async fn route_object(
    shared: &Shared,
    api_path: ApiPath,
    req: Request<Incoming>,
    opts: ListOptions,
    as_table: bool,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let method = req.method().clone();
    let state = &shared.state;
    let query = watch::query_pairs(req.uri().query().unwrap_or(""));
    let param = |k: &str| {
        query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let dry_run = param("dryRun").is_some_and(|v| v == "All");
    match (api_path, method) {
        (ApiPath::Collection { kind, namespace }, Method::GET) => {
            list(state, kind, namespace, &opts, as_table).await
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
            create(state, kind, &ns, body, dry_run).await
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
            if as_table {
                let meta = json!({"resourceVersion": obj["metadata"]["resourceVersion"]});
                return Ok(json_response(
                    StatusCode::OK,
                    &table::table(kind, &[obj], meta),
                ));
            }
            Ok(json_response(StatusCode::OK, &obj))
        }
        (
            ApiPath::Item {
                kind,
                namespace,
                name,
            },
            Method::PATCH,
        ) => {
            if !kind.is_user_facing() {
                return Err(read_only(kind));
            }
            check_namespace(&namespace)?;
            let manager = param("fieldManager").unwrap_or_default();
            let force = param("force").is_some_and(|v| v == "true");
            let (patch_type, patch) = read_patch(state, req).await?;
            let req = PatchRequest {
                patch_type,
                patch,
                manager,
                force,
                dry_run,
            };
            patch_object(shared, kind, &namespace, &name, req).await
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
            replace(state, kind, &namespace, &name, body, None, dry_run).await
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
            let options = deletion::DeleteOptions::read(state, req).await?;
            let obj = deletion::delete_one(state, kind, &namespace, &name, &options).await?;
            Ok(json_response(StatusCode::OK, &obj))
        }
        (
            ApiPath::Collection {
                kind,
                namespace: Some(ns),
            },
            Method::DELETE,
        ) => {
            if !kind.is_user_facing() {
                return Err(read_only(kind));
            }
            let options = deletion::DeleteOptions::read(state, req).await?;
            deletion::delete_collection(state, kind, &ns, &opts, &options).await
        }
        (
            ApiPath::Status {
                kind,
                namespace,
                name,
            },
            method,
        ) => {
            if method == Method::GET {
                return subresource::get(state, kind, &namespace, &name, as_table).await;
            }
            if !matches!(method, Method::PUT | Method::PATCH) {
                return Err(ApiError::method_not_allowed(
                    "GET, PUT, PATCH",
                    format!(
                        "{method} is not allowed on the status subresource; use GET, PUT or PATCH"
                    ),
                ));
            }
            if !kind.is_user_facing() {
                return Err(read_only(kind));
            }
            let write = if method == Method::PUT {
                let (parts, body) = req.into_parts();
                let body = body::read_object(&parts.headers, body, body_deadline(state)).await?;
                subresource::StatusWrite::Replace(body)
            } else {
                let (patch_type, patch) = read_patch(state, req).await?;
                subresource::StatusWrite::Patch(patch_type, patch)
            };
            subresource::write(state, kind, &namespace, &name, write, dry_run).await
        }
        (
            ApiPath::Collection {
                namespace: None, ..
            },
            m,
        ) => Err(ApiError::method_not_allowed(
            "GET",
            format!(
                "{m} is not allowed on a list across namespaces; only GET is (name a namespace)"
            ),
        )),
        (ApiPath::Collection { .. }, m) => Err(ApiError::method_not_allowed(
            "GET, POST, DELETE",
            format!("{m} is not allowed on a collection; use GET, POST or DELETE"),
        )),
        (ApiPath::Item { .. }, m) => Err(ApiError::method_not_allowed(
            "GET, PUT, PATCH, DELETE",
            format!("{m} is not allowed on an object; use GET, PUT, PATCH or DELETE"),
        )),
    }
}

fn body_deadline(state: &ApiState) -> body::BodyDeadline {
    body::BodyDeadline::from_config(&state.config.get().rouse)
}

/// A PATCH request's type (from its `Content-Type`) and body. Strategic merge is 415, as
/// Kubernetes answers for custom resources.
async fn read_patch(
    state: &ApiState,
    req: Request<Incoming>,
) -> Result<(PatchType, Value), ApiError> {
    let (patch_type, patch) = read_patch_any(state, req).await?;
    if patch_type == PatchType::StrategicMerge {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (strategic merge patch is not supported for custom resources; use --type=merge)",
        ));
    }
    Ok((patch_type, patch))
}

/// [`read_patch`] taking strategic merge too, for the core kinds whose strategic merge is a
/// merge.
async fn read_patch_any(
    state: &ApiState,
    req: Request<Incoming>,
) -> Result<(PatchType, Value), ApiError> {
    let ct = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let patch_type = PatchType::from_content_type(&ct).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the body's media type {ct:?} is not a patch: send application/merge-patch+json, application/json-patch+json or application/apply-patch+yaml"),
        )
    })?;
    let (parts, body) = req.into_parts();
    let bytes = body::read_bytes(&parts.headers, body, body_deadline(state)).await?;
    let patch = match patch_type {
        PatchType::Apply => body::parse_object(&bytes, None)?,
        _ => serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON patch: {e}")))?,
    };
    Ok((patch_type, patch))
}

fn only_get(method: &Method) -> Result<(), ApiError> {
    if method == Method::GET || method == Method::HEAD {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed(
            "GET",
            format!("{method} is not allowed here; use GET"),
        ))
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
    opts: &ListOptions,
    as_table: bool,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let store = state.store.clone();
    let (items, rv) = blocking(move || store.list(kind, namespace.as_deref()))
        .await?
        .map_err(|e| ApiError::from_store(e, kind, ""))?;
    let (items, next) = watch::page(items, opts);
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(next) = next {
        meta["continue"] = Value::String(next);
    }
    if as_table {
        return Ok(json_response(
            StatusCode::OK,
            &table::table(kind, &items, meta),
        ));
    }
    let list = json!({
        "apiVersion": kind.api_version(),
        "kind": format!("{}List", kind.name()),
        "metadata": meta,
        "items": items,
    });
    Ok(json_response(StatusCode::OK, &list))
}

/// The core group: Namespaces (read-only) and Knative's ConfigMaps.
async fn core(
    shared: &Shared,
    rest: String,
    req: Request<Incoming>,
    as_table: bool,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let state = &shared.state;
    let method = req.method().clone();
    let segs: Vec<&str> = rest.split('/').collect();
    let (namespace, name) = match segs.as_slice() {
        ["namespaces"] => return namespaces::serve(state, None, req, as_table).await,
        ["namespaces", n] => return namespaces::serve(state, Some(n), req, as_table).await,
        ["configmaps"] => (None, None),
        ["namespaces", ns, "configmaps"] => (Some(ns.to_string()), None),
        ["namespaces", ns, "configmaps", name] => (Some(ns.to_string()), Some(name.to_string())),
        _ => return Err(ApiError::unknown_path()),
    };
    let maps = &state.configmaps;
    match (name, method) {
        (None, Method::GET) => {
            let (items, rv) = maps.list(namespace.as_deref());
            if as_table {
                return Ok(json_response(
                    StatusCode::OK,
                    &configmaps::table(&items, rv),
                ));
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({"kind": "ConfigMapList", "apiVersion": "v1",
                        "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
            ))
        }
        (Some(name), Method::GET) => {
            let ns = namespace.unwrap_or_default();
            let cm = maps.get(&ns, &name)?;
            if as_table {
                let rv = cm["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("0")
                    .parse()
                    .unwrap_or(0);
                return Ok(json_response(StatusCode::OK, &configmaps::table(&[cm], rv)));
            }
            Ok(json_response(StatusCode::OK, &cm))
        }
        (Some(name), m @ (Method::PUT | Method::PATCH)) => {
            let ns = namespace.unwrap_or_default();
            let ct = req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_ascii_lowercase();
            let (parts, body) = req.into_parts();
            let bytes = body::read_bytes(&parts.headers, body, body_deadline(state)).await?;
            let (stored, config) = if m == Method::PUT {
                let new = body::parse_object(&bytes, None)?;
                maps.write(&ns, &name, |_| Ok(new))?
            } else {
                let patch_type = PatchType::from_content_type(&ct).ok_or_else(|| {
                    ApiError::new(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        format!("the body's media type {ct:?} is not a patch"),
                    )
                })?;
                let patch: Value = match patch_type {
                    PatchType::Apply => body::parse_object(&bytes, None)?,
                    _ => serde_json::from_slice(&bytes)
                        .map_err(|e| ApiError::bad_request(format!("malformed patch: {e}")))?,
                };
                maps.write(&ns, &name, |cur| {
                    let mut new = cur.clone();
                    match patch_type {
                        // A ConfigMap's data is a map of strings: a strategic merge is a merge.
                        PatchType::Json => patch::json_patch(&mut new, &patch).map_err(|e| {
                            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e)
                        })?,
                        _ => patch::merge_patch(&mut new, &patch),
                    }
                    Ok(new)
                })?
            };
            state.config.set(config);
            tracing::info!(configmap = %name, "config changed through the API");
            Ok(json_response(StatusCode::OK, &stored))
        }
        (Some(_), m) => Err(ApiError::method_not_allowed(
            "GET, PUT, PATCH",
            format!("{m} is not allowed on a configmap; Rouse's are fixed: use GET, PUT or PATCH"),
        )),
        (None, m) => Err(ApiError::method_not_allowed(
            "GET",
            format!("{m} is not allowed on the configmap list; Rouse's are fixed: use GET"),
        )),
    }
}

/// A PATCH as the request gave it.
struct PatchRequest {
    patch_type: PatchType,
    patch: Value,
    manager: String,
    force: bool,
    dry_run: bool,
}

/// Applies a patch to the stored object and writes the result through admission, retrying
/// when the object changed in between (unless the patch names a resourceVersion).
async fn patch_object(
    shared: &Shared,
    kind: Kind,
    ns: &str,
    name: &str,
    req: PatchRequest,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let state = &shared.state;
    let pinned = req.patch.pointer("/metadata/resourceVersion").is_some();
    if req.patch_type == PatchType::Apply && req.manager.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    }
    for _ in 0..REPLACE_ATTEMPTS {
        let store = state.store.clone();
        let (nsc, n) = (ns.to_string(), name.to_string());
        let old = match blocking(move || store.get(kind, &nsc, &n)).await? {
            Ok(old) => old,
            Err(StoreError::NotFound { .. }) if req.patch_type == PatchType::Apply => {
                // Server-side apply creates what is not there yet.
                let mut body = req.patch.clone();
                body["metadata"]["name"] = json!(name);
                body["metadata"]["namespace"] = json!(ns);
                let managed = apply_managed_fields(&Value::Null, kind, &req)?;
                let _capped = shared.create_lock.lock().await;
                return create_with(state, kind, ns, body, req.dry_run, Some(managed)).await;
            }
            Err(e) => return Err(ApiError::from_store(e, kind, name)),
        };
        let mut new = old.clone();
        let mut managed = None;
        match req.patch_type {
            PatchType::Merge | PatchType::StrategicMerge => {
                patch::merge_patch(&mut new, &req.patch)
            }
            PatchType::Json => patch::json_patch(&mut new, &req.patch).map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!("the JSON patch could not be applied: {e}"),
                )
            })?,
            PatchType::Apply => {
                managed = Some(apply_managed_fields(&old, kind, &req)?);
                patch::merge_patch(&mut new, &req.patch);
            }
        }
        if !pinned {
            new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        }
        match replace(state, kind, ns, name, new, managed, req.dry_run).await {
            Err(e) if e.reason == "Conflict" && !pinned => continue,
            other => return other,
        }
    }
    Err(ApiError::conflict(
        kind,
        name,
        "the object kept changing while it was being patched; try again",
    ))
}

/// The `managedFields` after `req`'s apply onto `old`: the manager's entry names the fields
/// it applied. A field another apply manager owns with a different value is a conflict (409)
/// unless `force`, which moves the field to this manager.
fn apply_managed_fields(old: &Value, kind: Kind, req: &PatchRequest) -> Result<Value, ApiError> {
    let applied = patch::fields_v1(&req.patch);
    let mut mine = Vec::new();
    patch::leaves(&applied, "", &mut mine);
    let mut entries: Vec<Value> = old["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut conflicts = Vec::new();
    for entry in entries.iter_mut() {
        if entry["manager"] == req.manager.as_str() {
            continue;
        }
        let mut theirs = Vec::new();
        patch::leaves(&entry["fieldsV1"], "", &mut theirs);
        for field in theirs.iter().filter(|f| mine.contains(f)) {
            let pointer = format!("/{}", field.replace('.', "/"));
            let (was, wants) = (old.pointer(&pointer), req.patch.pointer(&pointer));
            if !wants.zip(was).is_some_and(|(w, o)| patch::within(w, o)) {
                conflicts.push((
                    entry["manager"].as_str().unwrap_or("").to_string(),
                    field.clone(),
                ));
            }
        }
        if req.force {
            // The forced fields leave the other manager's set.
            let mut kept = entry["fieldsV1"].clone();
            for field in &mine {
                remove_leaf(&mut kept, field);
            }
            entry["fieldsV1"] = kept;
        }
    }
    if !conflicts.is_empty() && !req.force {
        let name = req.patch["metadata"]["name"].as_str().unwrap_or("");
        let listed: Vec<String> = conflicts
            .iter()
            .map(|(m, f)| format!("conflict with \"{m}\": .{f}"))
            .collect();
        let mut err = ApiError::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Apply failed with {} conflict{}: {}",
                conflicts.len(),
                if conflicts.len() == 1 { "" } else { "s" },
                listed.join("\n")
            ),
        )
        .for_object(kind, name);
        if let Some(d) = err.details.as_mut() {
            d["causes"] = conflicts
                .iter()
                .map(|(m, f)| {
                    json!({"reason": "FieldManagerConflict",
                           "message": format!("conflict with \"{m}\""), "field": format!(".{f}")})
                })
                .collect();
        }
        return Err(err);
    }
    entries.retain(|e| e["manager"] != req.manager.as_str());
    entries.push(json!({
        "manager": req.manager,
        "operation": "Apply",
        "apiVersion": kind.api_version(),
        "time": rouse_api::clock::now_rfc3339(),
        "fieldsType": "FieldsV1",
        "fieldsV1": applied,
    }));
    Ok(Value::Array(entries))
}

fn remove_leaf(fields: &mut Value, dotted: &str) {
    let mut parts = dotted
        .split('.')
        .map(|p| format!("f:{p}"))
        .collect::<Vec<_>>();
    let Some(last) = parts.pop() else { return };
    let mut cur = fields;
    for p in &parts {
        match cur.get_mut(p) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(&last);
    }
}

async fn create(
    state: &ApiState,
    kind: Kind,
    ns: &str,
    body: Value,
    dry_run: bool,
) -> Result<Response<Full<Bytes>>, ApiError> {
    create_with(state, kind, ns, body, dry_run, None).await
}

async fn create_with(
    state: &ApiState,
    kind: Kind,
    ns: &str,
    body: Value,
    dry_run: bool,
    managed: Option<Value>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if state.namespaces.is_terminating(ns) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ),
        ));
    }
    let target = Target {
        kind,
        namespace: ns,
        url_name: None,
    };
    let mut admitted = admit(target, body, None, &state.config.get())?;
    let name = admitted.object["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    check_quota(state, kind, ns, &name).await?;
    if let Some(managed) = managed {
        admitted.object["metadata"]["managedFields"] = managed;
    }
    if dry_run {
        // Admitted and within quota, as a create would be; nothing is stored.
        return Ok(json_response(StatusCode::CREATED, &admitted.object));
    }
    let store = state.store.clone();
    let created = blocking(move || store.create(kind, admitted.object))
        .await?
        .map_err(|e| ApiError::from_store(e, kind, &name))?;
    Ok(json_response(StatusCode::CREATED, &created))
}

/// Refuses a create of a Service, Configuration or Revision past `config-rouse`'s limits (403, worded as
/// Kubernetes words an exceeded ResourceQuota).
async fn check_quota(state: &ApiState, kind: Kind, ns: &str, name: &str) -> Result<(), ApiError> {
    let config = state.config.get();
    let limits = &config.rouse;
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
    managed: Option<Value>,
    dry_run: bool,
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
        let mut admitted = admit(target, body.clone(), Some(&old), &state.config.get())?;
        if !client_rv.is_empty() && client_rv != old_rv {
            return Err(ApiError::conflict(
                kind,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let managed_changed = managed
            .as_ref()
            .is_some_and(|m| old["metadata"]["managedFields"] != *m);
        if admitted.unchanged && !managed_changed {
            // A no-op write leaves the stored object (and its resourceVersion) as it was.
            return Ok(json_response(StatusCode::OK, &old));
        }
        match &managed {
            Some(m) => admitted.object["metadata"]["managedFields"] = m.clone(),
            // Writes other than apply keep the apply managers' record.
            None => {
                if let Some(m) = old["metadata"].get("managedFields") {
                    admitted.object["metadata"]["managedFields"] = m.clone();
                }
            }
        }
        if dry_run {
            return Ok(json_response(StatusCode::OK, &admitted.object));
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

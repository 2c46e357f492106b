//! Namespaces (`/api/v1/namespaces[/{name}]`). Local mode is single-tenant, so a namespace
//! exists as soon as an object is created in it (Kubernetes would answer 404 NotFound for a
//! missing namespace); `default` and `knative-serving` always exist. Namespaces can also be
//! created explicitly (`kubectl create namespace`, a manifest's `kind: Namespace`), keeping
//! their labels and annotations, in `<data-dir>/namespaces.json`. Deleting one deletes every
//! object in it; while finalizers hold some of them it stays, `Terminating`, and refuses new
//! objects (403), as Kubernetes does.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use rouse_api::Kind;
use rouse_store::{Propagation, StoreError};
use serde_json::{Value, json};

use super::patch::{self, PatchType};
use super::protobuf;
use super::status::json_response;
use super::{ApiError, ApiState, blocking, body, body_deadline, check_namespace, configmaps};

/// The namespaces that exist without being created.
const BUILT_IN: [&str; 2] = ["default", configmaps::NAMESPACE];

/// The namespaces created or changed through the API (their metadata), and those being
/// deleted.
#[derive(Debug, Default)]
pub struct Namespaces {
    inner: Mutex<BTreeMap<String, Value>>,
    /// Where they are kept across restarts (none: in memory only, as in tests).
    file: Option<PathBuf>,
}

impl Namespaces {
    /// The namespaces kept in `file` by an earlier run (none when it does not exist).
    pub fn persisted_in(file: &Path) -> anyhow::Result<Self> {
        let kept = match std::fs::read_to_string(file) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => anyhow::bail!("reading {}: {e}", file.display()),
        };
        Ok(Namespaces {
            inner: Mutex::new(kept),
            file: Some(file.to_path_buf()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Value>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the set whole to a temporary file, synced, then renamed into place.
    fn persist(&self, all: &BTreeMap<String, Value>) -> Result<(), ApiError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let write = || -> std::io::Result<()> {
            let tmp = file.with_extension("json.tmp");
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(serde_json::to_string(all).unwrap_or_default().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, file)
        };
        write().map_err(|e| ApiError::internal(format!("keeping the namespaces: {e}")))
    }

    /// True while `name` is being deleted: new objects are refused there.
    pub fn is_terminating(&self, name: &str) -> bool {
        self.lock()
            .get(name)
            .is_some_and(|ns| ns["status"]["phase"] == "Terminating")
    }
}

/// A Namespace object as Kubernetes shows one.
fn namespace_object(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "uid": format!("rouse-ns-{name}"), "resourceVersion": "1",
                     "labels": {"kubernetes.io/metadata.name": name}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("namespaces \"{name}\" not found"),
    )
}

/// `/api/v1/namespaces[/{name}]`: GET, POST (create), PUT and PATCH (labels and
/// annotations), DELETE.
pub async fn serve(
    state: &ApiState,
    name: Option<&str>,
    req: Request<Incoming>,
    as_table: bool,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let method = req.method().clone();
    match (name, method) {
        (None, Method::GET) => {
            let all = current(state).await?;
            let items: Vec<Value> = all.into_values().collect();
            if as_table {
                return Ok(json_response(StatusCode::OK, &table(&items)));
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({"kind": "NamespaceList", "apiVersion": "v1", "metadata": {}, "items": items}),
            ))
        }
        (Some(name), Method::GET) => {
            let ns = current(state)
                .await?
                .remove(name)
                .ok_or_else(|| not_found(name))?;
            if as_table {
                return Ok(json_response(StatusCode::OK, &table(&[ns])));
            }
            Ok(json_response(StatusCode::OK, &ns))
        }
        (None, Method::POST) => {
            let (parts, body) = req.into_parts();
            let protobuf = parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with(protobuf::MEDIA_TYPE));
            let body = if protobuf {
                // `kubectl create namespace` sends the typed client's protobuf.
                let bytes = body::read_bytes(&parts.headers, body, body_deadline(state)).await?;
                protobuf::decode_namespace(&bytes).map_err(ApiError::bad_request)?
            } else {
                body::read_object(&parts.headers, body, body_deadline(state)).await?
            };
            create(state, body).await
        }
        (Some(name), m @ (Method::PUT | Method::PATCH)) => {
            let existing = current(state)
                .await?
                .remove(name)
                .ok_or_else(|| not_found(name))?;
            let new = if m == Method::PUT {
                let (parts, body) = req.into_parts();
                body::read_object(&parts.headers, body, body_deadline(state)).await?
            } else {
                let (patch_type, patch) = super::read_patch_any(state, req).await?;
                let mut new = existing.clone();
                match patch_type {
                    PatchType::Json => patch::json_patch(&mut new, &patch).map_err(|e| {
                        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e)
                    })?,
                    // A Namespace's metadata is maps of strings: a strategic merge is a merge.
                    _ => patch::merge_patch(&mut new, &patch),
                }
                new
            };
            let stored = keep(state, name, &existing, &new)?;
            Ok(json_response(StatusCode::OK, &stored))
        }
        (Some(name), Method::DELETE) => delete(state, name).await,
        (Some(_), m) => Err(ApiError::method_not_allowed(
            "GET, PUT, PATCH, DELETE",
            format!("{m} is not allowed on a namespace; use GET, PUT, PATCH or DELETE"),
        )),
        (None, m) => Err(ApiError::method_not_allowed(
            "GET, POST",
            format!("{m} is not allowed on the namespace list; use GET or POST"),
        )),
    }
}

/// Every namespace: the built-in ones, those created, and those holding objects.
async fn current(state: &ApiState) -> Result<BTreeMap<String, Value>, ApiError> {
    let store = state.store.clone();
    let in_use = blocking(move || {
        let mut names = BTreeSet::new();
        for kind in Kind::ALL {
            for obj in store.list(kind, None)?.0 {
                if let Some(ns) = obj["metadata"]["namespace"].as_str() {
                    names.insert(ns.to_string());
                }
            }
        }
        Ok::<_, StoreError>(names)
    })
    .await?
    .map_err(|e| ApiError::from_store(e, Kind::Service, ""))?;
    let mut kept = state.namespaces.lock();
    // A namespace being deleted goes once nothing is left in it.
    let finished: Vec<String> = kept
        .iter()
        .filter(|(n, ns)| ns["status"]["phase"] == "Terminating" && !in_use.contains(*n))
        .map(|(n, _)| n.clone())
        .collect();
    if !finished.is_empty() {
        for n in &finished {
            kept.remove(n);
        }
        state.namespaces.persist(&kept)?;
    }
    let mut all: BTreeMap<String, Value> = BUILT_IN
        .into_iter()
        .chain(in_use.iter().map(String::as_str))
        .map(|n| (n.to_string(), namespace_object(n)))
        .collect();
    for (n, ns) in kept.iter() {
        all.insert(n.clone(), ns.clone());
    }
    Ok(all)
}

async fn create(state: &ApiState, body: Value) -> Result<Response<Full<Bytes>>, ApiError> {
    if body["kind"] != "Namespace" || body["apiVersion"] != "v1" {
        return Err(ApiError::bad_request(format!(
            "this endpoint takes v1 Namespace, got {} {}",
            body["apiVersion"], body["kind"]
        )));
    }
    let name = body["metadata"]["name"].as_str().unwrap_or("").to_string();
    check_namespace(&name).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("metadata.name: Invalid value: {name:?}: {}", e.message),
        )
    })?;
    if current(state).await?.contains_key(&name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("namespaces \"{name}\" already exists"),
        ));
    }
    let mut fresh = namespace_object(&name);
    fresh["metadata"]["creationTimestamp"] = json!(rouse_api::clock::now_rfc3339());
    let stored = keep(state, &name, &fresh, &body)?;
    Ok(json_response(StatusCode::CREATED, &stored))
}

/// Records `new`'s labels and annotations over `existing`, the rest staying the server's.
fn keep(state: &ApiState, name: &str, existing: &Value, new: &Value) -> Result<Value, ApiError> {
    if let Some(given) = new["metadata"]["name"].as_str()
        && given != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({given}) does not match the name on the URL ({name})"
        )));
    }
    let mut stored = existing.clone();
    for field in ["labels", "annotations"] {
        for (k, v) in new["metadata"][field].as_object().into_iter().flatten() {
            if !v.is_string() {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!("metadata.{field}[{k}]: Invalid value: must be a string"),
                ));
            }
        }
        stored["metadata"][field] = new["metadata"][field].clone();
    }
    stored["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
    if stored["metadata"]["annotations"].is_null()
        && let Some(meta) = stored["metadata"].as_object_mut()
    {
        meta.remove("annotations");
    }
    let mut kept = state.namespaces.lock();
    let rv = existing["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    if stored != *existing {
        stored["metadata"]["resourceVersion"] = json!((rv + 1).to_string());
    }
    kept.insert(name.to_string(), stored.clone());
    state.namespaces.persist(&kept)?;
    Ok(stored)
}

/// Deletes every object in the namespace; the namespace goes with them, or stays
/// `Terminating` while finalizers hold some.
async fn delete(state: &ApiState, name: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    if BUILT_IN.contains(&name) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
        ));
    }
    let mut ns = current(state)
        .await?
        .remove(name)
        .ok_or_else(|| not_found(name))?;
    ns["status"]["phase"] = json!("Terminating");
    if ns["metadata"]["deletionTimestamp"].is_null() {
        ns["metadata"]["deletionTimestamp"] = json!(rouse_api::clock::now_rfc3339());
    }
    {
        let mut kept = state.namespaces.lock();
        kept.insert(name.to_string(), ns.clone());
        state.namespaces.persist(&kept)?;
    }
    let store = state.store.clone();
    let n = name.to_string();
    blocking(move || {
        for kind in Kind::ALL {
            for obj in store.list(kind, Some(&n))?.0 {
                let obj_name = obj["metadata"]["name"].as_str().unwrap_or("");
                match store.delete_propagating(kind, &n, obj_name, Propagation::Background) {
                    // Gone already, with an owner deleted just before.
                    Ok(_) | Err(StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    })
    .await?
    .map_err(|e| ApiError::from_store(e, Kind::Service, ""))?;
    // Drops the record when nothing held anything back.
    current(state).await?;
    Ok(json_response(StatusCode::OK, &ns))
}

fn table(items: &[Value]) -> Value {
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            json!({"cells": [o["metadata"]["name"], o["status"]["phase"]],
                   "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                              "metadata": o["metadata"]}})
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {},
        "columnDefinitions": [
            {"name": "Name", "type": "string", "format": "name", "priority": 0, "description": ""},
            {"name": "Status", "type": "string", "format": "", "priority": 0, "description": ""},
        ],
        "rows": rows,
    })
}

//! DELETE of one object and of a collection (`deletecollection`), with Kubernetes'
//! `DeleteOptions`: `preconditions` (uid, resourceVersion), `propagationPolicy` (or the older
//! `orphanDependents`) and `dryRun`. Finalizers and propagation are the store's (see
//! `rouse_store::Store::delete`): an object with finalizers is marked, not removed.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use rouse_api::Kind;
use rouse_store::Propagation;
use serde_json::{Value, json};

use super::status::json_response;
use super::watch::{ListOptions, query_pairs};
use super::{ApiError, ApiState, blocking, body, body_deadline};

/// What a DELETE asks for, from its body and query.
pub struct DeleteOptions {
    pub propagation: Propagation,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub dry_run: bool,
}

impl DeleteOptions {
    /// Reads the `DeleteOptions` body (when there is one) and the query's options.
    pub async fn read(state: &ApiState, req: Request<Incoming>) -> Result<Self, ApiError> {
        let query = query_pairs(req.uri().query().unwrap_or(""));
        let (parts, body) = req.into_parts();
        let has_body = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v != "0")
            || parts.headers.contains_key(http::header::TRANSFER_ENCODING);
        let options = if has_body {
            body::read_object(&parts.headers, body, body_deadline(state)).await?
        } else {
            Value::Null
        };
        let param = |k: &str| query.iter().find(|(key, _)| key == k).map(|(_, v)| v);
        let policy = options["propagationPolicy"]
            .as_str()
            .or_else(|| param("propagationPolicy").map(String::as_str));
        let orphan = options["orphanDependents"]
            .as_bool()
            .or_else(|| param("orphanDependents").map(|v| v == "true"));
        let propagation = match (policy, orphan) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "propagationPolicy: Invalid value: both orphanDependents and propagationPolicy were given; use propagationPolicy",
                ));
            }
            (Some("Background"), _) | (None, None | Some(false)) => Propagation::Background,
            (Some("Foreground"), _) => Propagation::Foreground,
            (Some("Orphan"), _) | (None, Some(true)) => Propagation::Orphan,
            (Some(other), _) => {
                return Err(invalid(format!(
                    "propagationPolicy: Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
                )));
            }
        };
        let pre = &options["preconditions"];
        Ok(DeleteOptions {
            propagation,
            uid: pre["uid"].as_str().map(str::to_string),
            resource_version: pre["resourceVersion"].as_str().map(str::to_string),
            dry_run: param("dryRun").is_some_and(|v| v == "All")
                || options["dryRun"]
                    .as_array()
                    .is_some_and(|a| a.contains(&json!("All"))),
        })
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message)
}

/// Deletes one object: 200 with it as removed, or as marked when finalizers hold it.
pub async fn delete_one(
    state: &ApiState,
    kind: Kind,
    ns: &str,
    name: &str,
    options: &DeleteOptions,
) -> Result<Value, ApiError> {
    let store = state.store.clone();
    let (nsc, n) = (ns.to_string(), name.to_string());
    let obj = blocking(move || store.get(kind, &nsc, &n))
        .await?
        .map_err(|e| ApiError::from_store(e, kind, name))?;
    for (field, want) in [
        ("uid", &options.uid),
        ("resourceVersion", &options.resource_version),
    ] {
        let got = obj["metadata"][field].as_str().unwrap_or("");
        if let Some(want) = want
            && got != want
        {
            return Err(ApiError::conflict(
                kind,
                name,
                &format!("Precondition failed: {field}: {want}, object's {field}: {got}"),
            ));
        }
    }
    if options.dry_run {
        return Ok(obj);
    }
    let store = state.store.clone();
    let (nsc, n, propagation) = (ns.to_string(), name.to_string(), options.propagation);
    blocking(move || store.delete_propagating(kind, &nsc, &n, propagation))
        .await?
        .map_err(|e| ApiError::from_store(e, kind, name))
}

/// `deletecollection`: deletes every object of `kind` in `ns` that the list options' label
/// and field selectors match, and answers with the list of them (as deleted or marked).
pub async fn delete_collection(
    state: &ApiState,
    kind: Kind,
    ns: &str,
    selectors: &ListOptions,
    options: &DeleteOptions,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let store = state.store.clone();
    let nsc = ns.to_string();
    let (items, _) = blocking(move || store.list(kind, Some(&nsc)))
        .await?
        .map_err(|e| ApiError::from_store(e, kind, ""))?;
    let mut deleted = Vec::new();
    for obj in items.iter().filter(|o| selectors.matches(o)) {
        let name = obj["metadata"]["name"].as_str().unwrap_or("");
        match delete_one(state, kind, ns, name, options).await {
            Ok(gone) => deleted.push(gone),
            // Gone meanwhile (e.g. with an owner deleted just before): nothing left to do.
            Err(e) if e.code == StatusCode::NOT_FOUND => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "apiVersion": kind.api_version(),
            "kind": format!("{}List", kind.name()),
            "metadata": {},
            "items": deleted,
        }),
    ))
}

//! The `status` subresource (`.../{name}/status`), as Kubernetes serves it for a CRD that
//! declares one: GET returns the object; PUT and PATCH change only `status` (whatever else the
//! body says is ignored), while writes to the object itself ignore `status`. Knative's CRDs
//! declare `status` and no `scale`, so `.../scale` is 404 for every kind, as there.

use bytes::Bytes;
use http::Response;
use http::StatusCode;
use http_body_util::Full;
use rouse_api::Kind;
use rouse_api::decode::decode_value;
use rouse_store::StoreError;
use serde_json::{Value, json};

use super::admission::decode_error;
use super::patch::{self, PatchType};
use super::status::json_response;
use super::{ApiError, ApiState, REPLACE_ATTEMPTS, blocking, table};

/// What a status write carries.
pub enum StatusWrite {
    /// PUT: a whole object, of which only `status` (and `metadata.resourceVersion` as a
    /// precondition) counts.
    Replace(Value),
    /// PATCH: applied to the stored object; only the resulting `status` is kept.
    Patch(PatchType, Value),
}

/// GET `.../status`: the object, as a Table when asked.
pub async fn get(
    state: &ApiState,
    kind: Kind,
    ns: &str,
    name: &str,
    as_table: bool,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let obj = fetch(state, kind, ns, name).await?;
    if as_table {
        let meta = json!({"resourceVersion": obj["metadata"]["resourceVersion"]});
        return Ok(json_response(
            StatusCode::OK,
            &table::table(kind, &[obj], meta),
        ));
    }
    Ok(json_response(StatusCode::OK, &obj))
}

/// PUT or PATCH `.../status`: replaces the stored status with the one written, checked
/// against the kind's schema, leaving metadata and spec as stored.
pub async fn write(
    state: &ApiState,
    kind: Kind,
    ns: &str,
    name: &str,
    write: StatusWrite,
    dry_run: bool,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if let StatusWrite::Replace(body) = &write {
        check_identity(body, ns, name)?;
    }
    let pinned = match &write {
        StatusWrite::Replace(body) => body.pointer("/metadata/resourceVersion"),
        StatusWrite::Patch(_, patch) => patch.pointer("/metadata/resourceVersion"),
    }
    .and_then(Value::as_str)
    .filter(|rv| !rv.is_empty())
    .map(str::to_string);
    for _ in 0..REPLACE_ATTEMPTS {
        let old = fetch(state, kind, ns, name).await?;
        let old_rv = old["metadata"]["resourceVersion"].clone();
        if let Some(rv) = &pinned
            && old_rv.as_str() != Some(rv)
        {
            return Err(ApiError::conflict(
                kind,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let written = match &write {
            StatusWrite::Replace(body) => body.clone(),
            StatusWrite::Patch(patch_type, patch) => patched(&old, *patch_type, patch)?,
        };
        let mut new = old.clone();
        match written.get("status") {
            Some(status) if !status.is_null() => new["status"] = status.clone(),
            _ => {
                if let Some(map) = new.as_object_mut() {
                    map.remove("status");
                }
            }
        }
        let new = checked(kind, new)?;
        if new == old || dry_run {
            return Ok(json_response(StatusCode::OK, &new));
        }
        let store = state.store.clone();
        match blocking(move || store.update_status(kind, new)).await? {
            Ok(updated) => return Ok(json_response(StatusCode::OK, &updated)),
            Err(StoreError::Conflict { .. }) if pinned.is_none() => continue,
            Err(e) => return Err(ApiError::from_store(e, kind, name)),
        }
    }
    Err(ApiError::conflict(
        kind,
        name,
        "the object kept changing while its status was being written; try again",
    ))
}

async fn fetch(state: &ApiState, kind: Kind, ns: &str, name: &str) -> Result<Value, ApiError> {
    let store = state.store.clone();
    let (nsc, n) = (ns.to_string(), name.to_string());
    blocking(move || store.get(kind, &nsc, &n))
        .await?
        .map_err(|e| ApiError::from_store(e, kind, name))
}

/// A PUT's body must name the object of the URL, when it names one.
fn check_identity(body: &Value, ns: &str, name: &str) -> Result<(), ApiError> {
    for (field, want) in [("name", name), ("namespace", ns)] {
        if let Some(got) = body["metadata"][field].as_str()
            && !got.is_empty()
            && got != want
        {
            return Err(ApiError::bad_request(format!(
                "the {field} of the object ({got}) does not match the {field} on the URL ({want})"
            )));
        }
    }
    Ok(())
}

/// The stored object with the patch applied (server-side apply counts as a merge here: the
/// status has a single writer, so no field ownership is kept for it).
fn patched(old: &Value, patch_type: PatchType, patch: &Value) -> Result<Value, ApiError> {
    let mut new = old.clone();
    match patch_type {
        PatchType::Json => patch::json_patch(&mut new, patch).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!("the JSON patch could not be applied: {e}"),
            )
        })?,
        _ => patch::merge_patch(&mut new, patch),
    }
    Ok(new)
}

/// The object with its status checked against the kind's schema: a mistyped field is refused
/// with its path, unknown fields are pruned (as Kubernetes prunes a structural schema's).
fn checked(kind: Kind, mut obj: Value) -> Result<Value, ApiError> {
    let typed = decode_value(1, obj.clone()).map_err(|e| {
        let mut err = decode_error(kind, e);
        err.code = StatusCode::UNPROCESSABLE_ENTITY;
        err.reason = "Invalid";
        err
    })?;
    if typed.kind() != kind {
        return Err(ApiError::bad_request(format!(
            "kind {} does not match {}",
            typed.kind().name(),
            kind.name()
        )));
    }
    match typed.to_value().get("status") {
        Some(status) if obj.get("status").is_some() => obj["status"] = status.clone(),
        _ => {}
    }
    Ok(obj)
}

//! Admission of a written object, as Kubernetes' apiserver and Knative's webhooks do it: strict
//! decoding, namespace and name checks, server-owned metadata, defaulting, then validation.

use http::StatusCode;
use rouse_api::config::Config;
use rouse_api::decode::{DecodeError, decode_typed};
use rouse_api::domainmapping::DomainMapping;
use rouse_api::meta::Resource;
use rouse_api::serving::{Configuration, Revision, Route, Service};
use rouse_api::{FieldErrors, Kind, defaults, validation};
use serde_json::Value;

use super::paths::resource_name;
use super::status::ApiError;

/// The prefix on every validation failure: Knative's text without its webhook wording
/// ("admission webhook ... denied the request: "), since no webhook runs in a local binary.
const WEBHOOK_DENIED: &str = "validation failed: ";

/// An object ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    /// The object, defaulted and validated, without status.
    pub object: Value,
    /// True when an update changes nothing the user owns (metadata and spec equal the stored
    /// object's), so nothing needs writing.
    pub unchanged: bool,
}

/// Where the written object goes: its URL namespace and, for PUT, its URL name.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub kind: Kind,
    pub namespace: &'a str,
    pub url_name: Option<&'a str>,
}

/// Admits `body` for a create (`old` is `None`) or a replace of `old`.
pub fn admit(
    target: Target<'_>,
    body: Value,
    old: Option<&Value>,
    cfg: &Config,
) -> Result<Admitted, ApiError> {
    match target.kind {
        Kind::Service => admit_typed::<Service>(
            target,
            body,
            old,
            cfg,
            defaults::default_service,
            validation::validate_service,
        ),
        Kind::Configuration => admit_typed::<Configuration>(
            target,
            body,
            old,
            cfg,
            defaults::default_configuration,
            validation::validate_configuration,
        ),
        Kind::Revision => admit_typed::<Revision>(
            target,
            body,
            old,
            cfg,
            defaults::default_revision,
            validation::validate_revision,
        ),
        Kind::Route => admit_typed::<Route>(
            target,
            body,
            old,
            cfg,
            defaults::default_route,
            validation::validate_route,
        ),
        Kind::DomainMapping => admit_typed::<DomainMapping>(
            target,
            body,
            old,
            cfg,
            defaults::default_domain_mapping,
            validation::validate_domain_mapping,
        ),
        Kind::PodAutoscaler | Kind::ServerlessService => Err(read_only(target.kind)),
    }
}

/// 405 for the kinds only the controller writes.
pub fn read_only(kind: Kind) -> ApiError {
    ApiError::method_not_allowed(
        "GET",
        format!(
            "{} are managed by the controller and are read-only through the API",
            resource_name(kind)
        ),
    )
}

type Defaulter<T> = fn(&mut T, Option<&T>, &Config);
type Validator<T> = fn(&T, Option<&T>, &Config) -> Result<(), FieldErrors>;

fn admit_typed<T: Resource>(
    target: Target<'_>,
    mut body: Value,
    old: Option<&Value>,
    cfg: &Config,
    default: Defaulter<T>,
    validate: Validator<T>,
) -> Result<Admitted, ApiError> {
    let kind = target.kind;
    // Status belongs to the controller: whatever the client sent is dropped.
    if let Some(map) = body.as_object_mut() {
        map.remove("status");
    }
    let mut obj: T = decode_typed(body).map_err(|e| decode_error(kind, e))?;
    obj.set_type_meta();

    let meta = obj.meta_mut();
    if !meta.namespace.is_empty() && meta.namespace != target.namespace {
        return Err(ApiError::bad_request(format!(
            "the namespace of the provided object ({}) does not match the namespace sent on the request ({})",
            meta.namespace, target.namespace
        )));
    }
    meta.namespace = target.namespace.to_string();
    if let Some(url_name) = target.url_name {
        if meta.name.is_empty() {
            meta.name = url_name.to_string();
        } else if meta.name != url_name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({url_name})",
                meta.name
            )));
        }
    }

    let old: Option<T> = match old {
        None => {
            // The store stamps these on create; a copy of another object's must not leak in.
            meta.uid.clear();
            meta.resource_version.clear();
            meta.generation = 0;
            meta.creation_timestamp.clear();
            meta.deletion_timestamp = None;
            meta.deletion_grace_period_seconds = None;
            None
        }
        Some(old) => {
            let old = T::from_value(old.clone()).map_err(|e| {
                ApiError::internal(format!("the stored object does not decode: {e}"))
            })?;
            let o = old.meta();
            if !meta.uid.is_empty() && meta.uid != o.uid {
                return Err(ApiError::conflict(
                    kind,
                    &o.name,
                    &format!(
                        "Precondition failed: UID in precondition: {}, UID in object meta: {}",
                        meta.uid, o.uid
                    ),
                ));
            }
            meta.uid = o.uid.clone();
            meta.generation = o.generation;
            meta.creation_timestamp = o.creation_timestamp.clone();
            meta.deletion_timestamp = o.deletion_timestamp.clone();
            meta.deletion_grace_period_seconds = o.deletion_grace_period_seconds;
            Some(old)
        }
    };

    if let Some(o) = &old {
        // Re-sending what was created (a re-apply, a restart with `-f`) is no change, though
        // update-time defaulting skips create-only defaults (enableServiceLinks) and would
        // otherwise make it look like one.
        let mut as_created = obj.clone();
        default(&mut as_created, None, cfg);
        let stored = o.to_value();
        if user_owned(&as_created.to_value()) == user_owned(&stored) {
            return Ok(Admitted {
                object: stored,
                unchanged: true,
            });
        }
    }
    default(&mut obj, old.as_ref(), cfg);
    validate(&obj, old.as_ref(), cfg).map_err(|errs| {
        let mut err = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{WEBHOOK_DENIED}{errs}"),
        )
        .for_object(kind, &obj.meta().name);
        // kubectl prints each cause with its field path.
        if let Some(d) = err.details.as_mut() {
            d["kind"] = serde_json::json!(kind.name());
            d["causes"] = errs
                .0
                .iter()
                .flat_map(|e| {
                    e.paths.iter().map(move |p| {
                        serde_json::json!({"reason": "FieldValueInvalid", "message": e.message, "field": p})
                    })
                })
                .collect();
        }
        err
    })?;
    if obj.meta().name.is_empty() && obj.meta().generate_name.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "name or generateName is required: metadata.name",
        )
        .for_object(kind, ""));
    }

    let object = obj.to_value();
    let unchanged = old.is_some_and(|o| user_owned(&o.to_value()) == user_owned(&object));
    Ok(Admitted { object, unchanged })
}

/// The parts of an object a write can change: everything but status and the version stamp.
fn user_owned(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
    }
    v
}

/// A decoding failure as a 400 whose message names the field path.
pub(super) fn decode_error(kind: Kind, e: DecodeError) -> ApiError {
    let message = match e {
        DecodeError::Malformed { reason, .. } => format!("malformed object: {reason}"),
        DecodeError::UnknownKind { reason, .. } => {
            format!(
                "{reason} (this endpoint takes {} {})",
                kind.api_version(),
                kind.name()
            )
        }
        DecodeError::Field { path, reason, .. } if path.is_empty() => reason,
        DecodeError::Field { path, reason, .. } => format!("{reason}: {path}"),
    };
    ApiError::bad_request(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc() -> Value {
        json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": "hello"},
            "spec": {"template": {"spec": {"containers": [{"command": ["/bin/app"]}]}}},
            "status": {"url": "http://forged"}
        })
    }

    fn create(body: Value) -> Result<Admitted, ApiError> {
        let t = Target {
            kind: Kind::Service,
            namespace: "default",
            url_name: None,
        };
        admit(t, body, None, &Config::default())
    }

    fn replace(body: Value, old: &Value) -> Result<Admitted, ApiError> {
        let t = Target {
            kind: Kind::Service,
            namespace: "default",
            url_name: Some("hello"),
        };
        admit(t, body, Some(old), &Config::default())
    }

    /// What the store would hold after creating `admitted`.
    fn stored(admitted: &Admitted) -> Value {
        let mut v = admitted.object.clone();
        v["metadata"]["uid"] = json!("u1");
        v["metadata"]["resourceVersion"] = json!("3");
        v["metadata"]["generation"] = json!(1);
        v
    }

    #[test]
    fn create_defaults_and_drops_what_is_not_the_clients() {
        let mut body = svc();
        body["metadata"]["uid"] = json!("copied");
        body["metadata"]["resourceVersion"] = json!("7");
        let a = create(body).unwrap();
        let o = &a.object;
        assert!(!a.unchanged);
        assert_eq!(o["metadata"]["namespace"], "default");
        assert!(o["metadata"].get("uid").is_none(), "{o}");
        assert!(o["metadata"].get("resourceVersion").is_none(), "{o}");
        assert!(
            o.get("status").is_none_or(|s| s.get("url").is_none()),
            "{o}"
        );
        assert_eq!(o["spec"]["template"]["spec"]["timeoutSeconds"], 300);
        assert_eq!(
            o["spec"]["template"]["spec"]["containers"][0]["name"],
            "user-container"
        );
        assert_eq!(o["spec"]["traffic"][0]["percent"], 100);
    }

    #[test]
    fn resending_the_same_manifest_is_unchanged() {
        let old = stored(&create(svc()).unwrap());
        let a = replace(svc(), &old).unwrap();
        assert!(a.unchanged);
        let mut labelled = svc();
        labelled["metadata"]["labels"] = json!({"team": "a"});
        let a = replace(labelled, &old).unwrap();
        assert!(!a.unchanged);
        assert_eq!(a.object["metadata"]["uid"], "u1");
        assert_eq!(a.object["metadata"]["generation"], 1);
        let mut stale = svc();
        stale["metadata"]["uid"] = json!("another-incarnation");
        let e = replace(stale, &old).unwrap_err();
        assert_eq!((e.code, e.reason), (StatusCode::CONFLICT, "Conflict"));
    }

    #[test]
    fn refusals() {
        let mut other_ns = svc();
        other_ns["metadata"]["namespace"] = json!("elsewhere");
        let e = create(other_ns).unwrap_err();
        assert_eq!(e.code, StatusCode::BAD_REQUEST);

        let old = stored(&create(svc()).unwrap());
        let mut renamed = svc();
        renamed["metadata"]["name"] = json!("other");
        let e = replace(renamed, &old).unwrap_err();
        assert!(
            e.message.contains("does not match the name on the URL"),
            "{e}"
        );

        let mut typo = svc();
        typo["spec"]["template"]["spec"]["containers"][0]["comand"] = json!(["x"]);
        let e = create(typo).unwrap_err();
        assert_eq!(e.code, StatusCode::BAD_REQUEST);
        assert!(
            e.message
                .ends_with("spec.template.spec.containers[0].comand"),
            "{e}"
        );

        let mut route_body = svc();
        route_body["kind"] = json!("Route");
        let e = create(route_body).unwrap_err();
        assert_eq!(e.code, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("this endpoint takes"), "{e}");

        let mut split = svc();
        split["spec"]["traffic"] = json!([{"latestRevision": true, "percent": 90}]);
        let e = create(split).unwrap_err();
        assert_eq!(
            (e.code, e.reason),
            (StatusCode::UNPROCESSABLE_ENTITY, "Invalid")
        );
        assert_eq!(
            e.message,
            "validation failed: Traffic targets sum to 90, want 100: spec.traffic"
        );

        let t = Target {
            kind: Kind::PodAutoscaler,
            namespace: "default",
            url_name: None,
        };
        let e = admit(t, json!({}), None, &Config::default()).unwrap_err();
        assert_eq!(e.code, StatusCode::METHOD_NOT_ALLOWED);
    }
}

//! One `admission.k8s.io/v1` AdmissionReview in, its answer out: Knative's defaulting (a JSON
//! patch), validation (Knative's messages with field paths) and ConfigMap validation, with the
//! rules local mode applies (`rouse_api::defaults`, `rouse_api::validation`, the config
//! parsers). The internal kinds the controller writes (PodAutoscaler, ServerlessService,
//! Ingress) are validated too, as Knative's webhook does.

use base64::Engine as _;
use rouse_api::autoscaling::PodAutoscaler;
use rouse_api::config::{Config, ConfigData};
use rouse_api::decode::{DecodeError, decode_typed};
use rouse_api::domainmapping::DomainMapping;
use rouse_api::ingress::Ingress;
use rouse_api::meta::Resource;
use rouse_api::networking::ServerlessService;
use rouse_api::serving::{
    ANNOTATION_CREATOR, ANNOTATION_LAST_MODIFIER, Configuration, Revision, Route, Service,
};
use rouse_api::{FieldErrors, Kind, defaults, validation};
use serde::Deserialize;
use serde_json::{Value, json};

use super::patch;
use crate::config_watch;

/// The prefix of every refusal, as Knative's webhook words it.
const VALIDATION_FAILED: &str = "validation failed: ";

/// Which webhook a review was sent to (by its path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Mutating: Knative's defaults as a JSON patch.
    Defaulting,
    /// Validating: Knative's resource validation.
    Validation,
    /// Validating: the ConfigMaps in the system namespace.
    ConfigValidation,
}

/// A review the webhook cannot read (answered 400: the API server then applies the
/// failure policy).
#[derive(Debug, thiserror::Error)]
#[error("malformed AdmissionReview: {0}")]
pub struct MalformedReview(String);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdmissionReview {
    #[serde(default)]
    api_version: String,
    request: Option<AdmissionRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdmissionRequest {
    uid: String,
    kind: GroupVersionKind,
    operation: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    object: Option<Value>,
    #[serde(default)]
    old_object: Option<Value>,
    #[serde(default)]
    user_info: UserInfo,
}

#[derive(Debug, Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

#[derive(Debug, Default, Deserialize)]
struct UserInfo {
    #[serde(default)]
    username: String,
}

/// What the webhook decided.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Allow,
    /// Allowed with these JSON patch operations.
    Patch(Vec<Value>),
    /// Refused: the message (and the field paths, for kubectl's causes).
    Deny {
        message: String,
        causes: Vec<(String, String)>,
    },
}

/// Answers the AdmissionReview in `body` under `cfg` (the live config).
pub fn review(hook: Hook, body: &[u8], cfg: &Config) -> Result<Value, MalformedReview> {
    let review: AdmissionReview =
        serde_json::from_slice(body).map_err(|e| MalformedReview(e.to_string()))?;
    if review.api_version != "admission.k8s.io/v1" {
        return Err(MalformedReview(format!(
            "apiVersion {:?}: only admission.k8s.io/v1 is served",
            review.api_version
        )));
    }
    let request = review
        .request
        .ok_or_else(|| MalformedReview("no request".into()))?;
    let verdict = match hook {
        _ if !matches!(request.operation.as_str(), "CREATE" | "UPDATE") => Verdict::Allow,
        Hook::ConfigValidation => validate_configmap(&request),
        Hook::Defaulting | Hook::Validation => admit(hook, &request, cfg),
    };
    let mut response = json!({"uid": request.uid, "allowed": true});
    match verdict {
        Verdict::Allow => {}
        Verdict::Patch(ops) => {
            response["patchType"] = json!("JSONPatch");
            response["patch"] = json!(
                base64::engine::general_purpose::STANDARD.encode(Value::Array(ops).to_string())
            );
        }
        Verdict::Deny { message, causes } => {
            response["allowed"] = json!(false);
            let causes: Vec<Value> = causes
                .into_iter()
                .map(|(message, field)| {
                    json!({"reason": "FieldValueInvalid", "message": message, "field": field})
                })
                .collect();
            response["status"] = json!({
                "status": "Failure", "code": 400, "reason": "BadRequest", "message": message,
                "details": {"causes": causes},
            });
        }
    }
    Ok(
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}),
    )
}

fn admit(hook: Hook, req: &AdmissionRequest, cfg: &Config) -> Verdict {
    match (req.kind.group.as_str(), req.kind.kind.as_str()) {
        ("serving.knative.dev", _) => admit_serving(hook, req, cfg),
        ("autoscaling.internal.knative.dev", "PodAutoscaler") => admit_typed::<PodAutoscaler>(
            hook,
            req,
            cfg,
            defaults::default_pod_autoscaler,
            validation::validate_pod_autoscaler,
            false,
        ),
        // Knative gives a ServerlessService no defaults (its mode is required): validated only.
        ("networking.internal.knative.dev", "ServerlessService") if hook == Hook::Validation => {
            admit_typed::<ServerlessService>(
                hook,
                req,
                cfg,
                no_defaults,
                validation::validate_serverless_service,
                false,
            )
        }
        ("networking.internal.knative.dev", "Ingress") => admit_ingress(hook, req),
        _ => Verdict::Allow,
    }
}

fn no_defaults<T>(_: &mut T, _: Option<&T>, _: &Config) {}

/// An Ingress (not one of the store's kinds) decoded as sent, then defaulted or validated.
fn admit_ingress(hook: Hook, req: &AdmissionRequest) -> Verdict {
    let Some(sent) = &req.object else {
        return deny_plain("the request carries no object".into());
    };
    let mut ing: Ingress =
        match serde_json::from_value(trimmed(sent, req.namespace.as_deref().unwrap_or(""))) {
            Ok(i) => i,
            Err(e) => return deny_plain(format!("{VALIDATION_FAILED}{e}")),
        };
    if hook == Hook::Defaulting {
        let before = serde_json::to_value(&ing).unwrap_or_default();
        defaults::default_ingress(&mut ing);
        let after = serde_json::to_value(&ing).unwrap_or_default();
        return patch_verdict(sent, &before, &after);
    }
    if ing.metadata.deletion_timestamp.is_some() {
        return Verdict::Allow;
    }
    match validation::validate_ingress(&ing, None) {
        Ok(()) => Verdict::Allow,
        Err(errs) => refusal(errs),
    }
}

/// The JSON patch taking `sent` where defaulting took the typed object (`before` to
/// `after`), keeping what the types do not read.
fn patch_verdict(sent: &Value, before: &Value, after: &Value) -> Verdict {
    let ops = patch::diff(sent, &patch::overlay(sent, before, after));
    if ops.is_empty() {
        Verdict::Allow
    } else {
        Verdict::Patch(ops)
    }
}

/// Knative's refusal of what validation found.
fn refusal(errs: FieldErrors) -> Verdict {
    Verdict::Deny {
        message: format!("{VALIDATION_FAILED}{errs}"),
        causes: errs
            .0
            .iter()
            .flat_map(|e| e.paths.iter().map(|p| (e.message.clone(), p.clone())))
            .collect(),
    }
}

fn admit_serving(hook: Hook, req: &AdmissionRequest, cfg: &Config) -> Verdict {
    match Kind::from_name(&req.kind.kind) {
        Some(Kind::Service) => admit_typed::<Service>(
            hook,
            req,
            cfg,
            defaults::default_service,
            validation::validate_service,
            true,
        ),
        Some(Kind::Configuration) => admit_typed::<Configuration>(
            hook,
            req,
            cfg,
            defaults::default_configuration,
            validation::validate_configuration,
            true,
        ),
        Some(Kind::Revision) => admit_typed::<Revision>(
            hook,
            req,
            cfg,
            defaults::default_revision,
            validation::validate_revision,
            false,
        ),
        Some(Kind::Route) => admit_typed::<Route>(
            hook,
            req,
            cfg,
            defaults::default_route,
            validation::validate_route,
            true,
        ),
        Some(Kind::DomainMapping) => admit_typed::<DomainMapping>(
            hook,
            req,
            cfg,
            defaults::default_domain_mapping,
            validation::validate_domain_mapping,
            false,
        ),
        _ => Verdict::Allow,
    }
}

type Defaulter<T> = fn(&mut T, Option<&T>, &Config);
type Validator<T> = fn(&T, Option<&T>, &Config) -> Result<(), FieldErrors>;

fn admit_typed<T: Resource>(
    hook: Hook,
    req: &AdmissionRequest,
    cfg: &Config,
    default: Defaulter<T>,
    validate: Validator<T>,
    records_user: bool,
) -> Verdict {
    let Some(sent) = &req.object else {
        return deny_plain("the request carries no object".into());
    };
    let namespace = req.namespace.as_deref().unwrap_or("");
    let mut obj: T = match decode(sent, namespace) {
        Ok(o) => o,
        Err(v) => return v,
    };
    let old: Option<T> = match (req.operation.as_str(), &req.old_object) {
        ("UPDATE", Some(o)) => match decode(o, namespace) {
            Ok(o) => Some(o),
            Err(v) => return v,
        },
        _ => None,
    };
    match hook {
        Hook::Defaulting => {
            let before = obj.to_value();
            default(&mut obj, old.as_ref(), cfg);
            // As Knative: objects the controller made (owned by a Service) carry their
            // parent's annotations, not the controller's identity.
            if records_user
                && !req.user_info.username.is_empty()
                && obj.meta().owner_references.is_empty()
            {
                record_user(&mut obj, old.as_ref(), &req.user_info.username);
            }
            patch_verdict(sent, &before, &obj.to_value())
        }
        // An object on its way out may drop its finalizers whatever its spec says.
        _ if obj.meta().deletion_timestamp.is_some() => Verdict::Allow,
        _ => match validate(&obj, old.as_ref(), cfg) {
            Ok(()) => Verdict::Allow,
            Err(errs) => refusal(errs),
        },
    }
}

/// Knative's `serving.knative.dev/creator` and `lastModifier`: the creator and last modifier
/// on create, the modifier again on an update that changes the spec.
fn record_user<T: Resource>(obj: &mut T, old: Option<&T>, username: &str) {
    let spec_changed = old.is_none_or(|o| o.to_value()["spec"] != obj.to_value()["spec"]);
    let annotations = &mut obj.meta_mut().annotations;
    if old.is_none() {
        annotations.insert(ANNOTATION_CREATOR.into(), username.into());
    }
    if spec_changed {
        annotations.insert(ANNOTATION_LAST_MODIFIER.into(), username.into());
    }
}

/// Metadata fields the API types read; the API server sends more (deletionGracePeriodSeconds,
/// nulls for unset timestamps), which mean nothing to defaulting or validation.
const META_FIELDS: [&str; 14] = [
    "name",
    "generateName",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
    "selfLink",
];

/// The typed object: status dropped (the controller's), metadata the types know, the
/// request's namespace when the object names none (as on create).
/// The object without its status and the metadata fields the API types do not read.
fn trimmed(sent: &Value, namespace: &str) -> Value {
    let mut v = sent.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("status");
        if let Some(Value::Object(meta)) = map.get_mut("metadata") {
            meta.retain(|k, v| META_FIELDS.contains(&k.as_str()) && !v.is_null());
            if !meta.contains_key("namespace") && !namespace.is_empty() {
                meta.insert("namespace".into(), json!(namespace));
            }
        }
    }
    v
}

fn decode<T: Resource>(sent: &Value, namespace: &str) -> Result<T, Verdict> {
    decode_typed::<T>(trimmed(sent, namespace)).map_err(|e| {
        let (message, field) = match e {
            DecodeError::Field { path, reason, .. } if !path.is_empty() => {
                (format!("{reason}: {path}"), Some((reason, path)))
            }
            other => (other.to_string(), None),
        };
        Verdict::Deny {
            message: format!("{VALIDATION_FAILED}{message}"),
            causes: field.into_iter().collect(),
        }
    })
}

fn deny_plain(message: String) -> Verdict {
    Verdict::Deny {
        message,
        causes: Vec::new(),
    }
}

/// A ConfigMap Rouse reads is parsed as the controller will parse it; others pass.
fn validate_configmap(req: &AdmissionRequest) -> Verdict {
    let Some(obj) = &req.object else {
        return deny_plain("the request carries no object".into());
    };
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    if !config_watch::is_read(name) {
        return Verdict::Allow;
    }
    let mut data = ConfigData::new();
    if let Some(map) = obj.get("data").and_then(Value::as_object) {
        for (k, v) in map {
            data.insert(k.clone(), v.as_str().unwrap_or("").to_string());
        }
    }
    match config_watch::parse_one(name, &data) {
        Ok(()) => Verdict::Allow,
        Err(e) => Verdict::Deny {
            message: format!("{VALIDATION_FAILED}{e}"),
            causes: vec![(e.reason.clone(), format!("data.{}", e.key))],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: &str, operation: &str, object: Value, old: Option<Value>) -> Vec<u8> {
        request_in("serving.knative.dev", kind, operation, object, old)
    }

    fn request_in(
        group: &str,
        kind: &str,
        operation: &str,
        object: Value,
        old: Option<Value>,
    ) -> Vec<u8> {
        json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": group, "version": "v1", "kind": kind},
                "resource": {"group": "serving.knative.dev", "version": "v1", "resource": "services"},
                "namespace": "shop", "operation": operation,
                "userInfo": {"username": "alice@example.com", "groups": ["system:authenticated"]},
                "object": object, "oldObject": old,
            }
        })
        .to_string()
        .into_bytes()
    }

    fn ksvc(image: &str) -> Value {
        json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": "hello", "namespace": "shop", "creationTimestamp": null,
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"template": {"spec": {"containers": [{"image": image}]}}},
        })
    }

    fn response_ops(out: &Value) -> Vec<Value> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(out["response"]["patch"].as_str().unwrap_or(""))
            .unwrap();
        serde_json::from_slice(&raw).unwrap_or_default()
    }

    #[test]
    fn the_user_is_recorded_on_what_users_write_only() {
        let cfg = Config::default();
        let config = json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Configuration",
            "metadata": {"name": "hello", "namespace": "shop"},
            "spec": {"template": {"spec": {"containers": [{"image": "nginx"}]}}},
        });
        let out = review(
            Hook::Defaulting,
            &request("Configuration", "CREATE", config.clone(), None),
            &cfg,
        )
        .unwrap();
        let ops = response_ops(&out);
        assert!(
            ops.iter().any(|o| o["path"] == "/metadata/annotations"
                && o["value"]["serving.knative.dev/creator"] == "alice@example.com"),
            "{ops:?}"
        );
        let mut owned = config;
        owned["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "hello",
            "uid": "u1", "controller": true, "blockOwnerDeletion": true,
        }]);
        let out = review(
            Hook::Defaulting,
            &request("Configuration", "CREATE", owned, None),
            &cfg,
        )
        .unwrap();
        let ops = response_ops(&out);
        assert!(!ops.is_empty(), "still defaulted");
        assert!(
            !ops.iter()
                .any(|o| o["path"].as_str().unwrap().starts_with("/metadata")),
            "{ops:?}"
        );

        // On update, lastModifier follows a spec change only.
        let mut old = json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Route",
            "metadata": {"name": "r", "namespace": "shop",
                         "annotations": {"serving.knative.dev/creator": "bob",
                                         "serving.knative.dev/lastModifier": "bob"}},
            "spec": {"traffic": [{"revisionName": "a", "percent": 100, "latestRevision": false}]},
        });
        let mut labelled = old.clone();
        labelled["metadata"]["labels"] = json!({"team": "x"});
        let out = review(
            Hook::Defaulting,
            &request("Route", "UPDATE", labelled, Some(old.clone())),
            &cfg,
        )
        .unwrap();
        assert!(out["response"].get("patch").is_none(), "{out}");
        let mut moved = old.clone();
        moved["spec"]["traffic"][0]["revisionName"] = json!("b");
        let out = review(
            Hook::Defaulting,
            &request("Route", "UPDATE", moved, Some(old.take())),
            &cfg,
        )
        .unwrap();
        assert_eq!(
            response_ops(&out),
            vec![
                json!({"op": "replace", "path": "/metadata/annotations/serving.knative.dev~1lastModifier", "value": "alice@example.com"})
            ]
        );
    }

    #[test]
    fn malformed_reviews_are_refused() {
        let cfg = Config::default();
        assert!(review(Hook::Validation, b"{", &cfg).is_err());
        let v1beta1 = br#"{"apiVersion":"admission.k8s.io/v1beta1","request":{}}"#;
        assert!(review(Hook::Validation, v1beta1, &cfg).is_err());
        let empty = br#"{"apiVersion":"admission.k8s.io/v1"}"#;
        assert!(review(Hook::Validation, empty, &cfg).is_err());
    }

    #[test]
    fn deletes_and_other_groups_pass() {
        let cfg = Config::default();
        let out = review(
            Hook::Validation,
            &request("Service", "DELETE", Value::Null, None),
            &cfg,
        )
        .unwrap();
        assert_eq!(out["response"]["allowed"], true);
        let other = request_in("example.com", "Service", "CREATE", json!({}), None);
        let out = review(Hook::Validation, &other, &cfg).unwrap();
        assert_eq!(out["response"]["allowed"], true, "{out}");
    }

    #[test]
    fn undecodable_objects_are_refused_with_the_field_path() {
        let mut bad = ksvc("nginx");
        bad["spec"]["template"]["spec"]["containerConcurrency"] = json!("many");
        let out = review(
            Hook::Validation,
            &request("Service", "CREATE", bad, None),
            &Config::default(),
        )
        .unwrap();
        assert_eq!(out["response"]["allowed"], false);
        let message = out["response"]["status"]["message"].as_str().unwrap();
        assert!(
            message.ends_with("spec.template.spec.containerConcurrency"),
            "{message}"
        );
    }
}

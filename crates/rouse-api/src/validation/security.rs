//! Pod and container security contexts (kept as JSON in the types): the fields Knative
//! allows, feature-gated capabilities, and id bounds.

use serde_json::Value;

use super::podspec::feature_disabled;
use crate::config::features::{self as feat, FeaturesConfig, Flag};
use crate::error::{FieldError, FieldErrors};

/// Bound Kubernetes uses for user and group ids.
const MAX_I32: i64 = i32::MAX as i64;

fn id_bounds(obj: &serde_json::Map<String, Value>, keys: &[&str], errs: &mut FieldErrors) {
    for k in keys {
        if let Some(n) = obj.get(*k).and_then(Value::as_i64)
            && !(0..=MAX_I32).contains(&n)
        {
            errs.push(FieldError::out_of_bounds(n, 0, MAX_I32, k));
        }
    }
}

fn secure_defaults(f: &FeaturesConfig) -> bool {
    matches!(
        f.get(feat::SECURE_POD_DEFAULTS),
        Flag::Enabled | Flag::AllowRootBounded
    )
}

pub(super) fn pod_security_context(sc: &Value, f: &FeaturesConfig) -> FieldErrors {
    let mut errs = FieldErrors::new();
    let Some(obj) = sc.as_object() else {
        errs.push(FieldError::invalid_value(sc, ""));
        return errs;
    };
    let full = f.get(feat::PODSPEC_SECURITYCONTEXT) != Flag::Disabled;
    let mut disallowed = Vec::new();
    for (key, v) in obj {
        if v.is_null() {
            continue;
        }
        let ok = match key.as_str() {
            "runAsUser" | "runAsGroup" | "runAsNonRoot" | "fsGroup" | "supplementalGroups" => full,
            // With secure-pod-defaults alone, only a RuntimeDefault/Unconfined seccomp type.
            "seccompProfile" => {
                full || (secure_defaults(f)
                    && v.as_object().is_some_and(|m| m.len() == 1)
                    && matches!(
                        v.get("type").and_then(Value::as_str),
                        Some("RuntimeDefault" | "Unconfined")
                    ))
            }
            _ => false,
        };
        if !ok {
            disallowed.push(key.as_str());
        }
    }
    if !disallowed.is_empty() {
        errs.push(FieldError::disallowed(&disallowed));
    }
    id_bounds(obj, &["runAsUser", "runAsGroup", "fsGroup"], &mut errs);
    if let Some(groups) = obj.get("supplementalGroups").and_then(Value::as_array) {
        for (i, g) in groups.iter().enumerate() {
            if let Some(n) = g.as_i64()
                && !(0..=MAX_I32).contains(&n)
            {
                errs.push(FieldError::out_of_bounds(
                    n,
                    0,
                    MAX_I32,
                    &format!("supplementalGroups[{i}]"),
                ));
            }
        }
    }
    errs
}

pub(super) fn security_context(sc: &Value, f: &FeaturesConfig) -> FieldErrors {
    let mut errs = FieldErrors::new();
    let Some(obj) = sc.as_object() else {
        errs.push(FieldError::invalid_value(sc, ""));
        return errs;
    };
    let mut disallowed = Vec::new();
    for (key, v) in obj {
        if v.is_null() {
            continue;
        }
        let ok = match key.as_str() {
            "capabilities"
            | "readOnlyRootFilesystem"
            | "runAsUser"
            | "runAsGroup"
            | "runAsNonRoot"
            | "allowPrivilegeEscalation"
            | "seccompProfile" => true,
            "privileged" => v == &Value::Bool(false),
            _ => false,
        };
        if !ok {
            disallowed.push(key.as_str());
        }
    }
    if !disallowed.is_empty() {
        errs.push(FieldError::disallowed(&disallowed));
    }
    if let Some(caps) = obj.get("capabilities").and_then(Value::as_object) {
        let add_ok = |add: &Value| {
            f.get(feat::CONTAINERSPEC_ADD_CAPABILITIES) == Flag::Enabled
                || (secure_defaults(f) && *add == serde_json::json!(["NET_BIND_SERVICE"]))
        };
        for (key, v) in caps {
            if v.is_null() || v.as_array().is_some_and(Vec::is_empty) {
                continue;
            }
            match key.as_str() {
                "drop" => {}
                "add" if add_ok(v) => {}
                "add" => errs.push(
                    feature_disabled("add", feat::CONTAINERSPEC_ADD_CAPABILITIES)
                        .via_field("capabilities"),
                ),
                _ => errs.push(FieldError::disallowed(&[key]).via_field("capabilities")),
            }
        }
    }
    id_bounds(obj, &["runAsUser", "runAsGroup"], &mut errs);
    errs
}

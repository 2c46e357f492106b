//! Metadata rules: names, the annotations Knative checks, labels that must match an owner, and
//! the creator/lastModifier annotations.

use std::collections::BTreeMap;
use std::time::Duration;

use super::names::{dns1035_label_errors, dns1035_prefix_errors, go_list, quote};
use crate::autoscaling::annotations::GROUP as AUTOSCALING_GROUP;
use crate::config::is_quantity;
use crate::duration::parse_go_duration;
use crate::error::{FieldError, FieldErrors};
use crate::meta::ObjectMeta;
use crate::serving::{
    ANNOTATION_CREATOR, ANNOTATION_LAST_MODIFIER, ANNOTATION_PROGRESS_DEADLINE,
    ANNOTATION_REQUEST_BODY_BUFFER, ANNOTATION_ROLLOUT_DURATION,
    ANNOTATION_ROLLOUT_DURATION_LEGACY,
};

type Annotations = BTreeMap<String, String>;

/// Name or generateName, as Kubernetes requires; paths `name`/`generateName` (first error only).
pub(crate) fn object_name(meta: &ObjectMeta) -> FieldErrors {
    if !meta.generate_name.is_empty() {
        let msgs = dns1035_prefix_errors(&meta.generate_name);
        if !msgs.is_empty() {
            return FieldError::new(
                format!("not a DNS 1035 label prefix: {}", go_list(&msgs)),
                &["generateName"],
            )
            .into();
        }
    }
    if !meta.name.is_empty() {
        let msgs = dns1035_label_errors(&meta.name);
        if !msgs.is_empty() {
            return FieldError::new(
                format!("not a DNS 1035 label: {}", go_list(&msgs)),
                &["name"],
            )
            .into();
        }
    }
    if meta.name.is_empty() && meta.generate_name.is_empty() {
        return FieldError::new("name or generateName is required", &["name"]).into();
    }
    FieldErrors::new()
}

/// Service, Configuration and Route may not carry autoscaling annotations (path: the map).
pub(crate) fn no_autoscaling_annotations(annotations: &Annotations) -> FieldErrors {
    let mut errs = FieldErrors::new();
    for key in annotations
        .keys()
        .filter(|k| k.starts_with(AUTOSCALING_GROUP))
    {
        errs.push(
            FieldError::new(format!("invalid key name {}", quote(key)), &[""]).with_details(
                "autoscaling annotations must be put under \"spec.template.metadata.annotations\" to work",
            ),
        );
    }
    errs
}

/// `serving.knative.dev/rollout-duration` (Service, Route): whole non-negative seconds.
pub(crate) fn rollout_duration(annotations: &Annotations) -> FieldErrors {
    duration_annotation(
        annotations,
        &[
            ANNOTATION_ROLLOUT_DURATION,
            ANNOTATION_ROLLOUT_DURATION_LEGACY,
        ],
        "rollout-duration",
    )
}

/// `serving.knative.dev/progress-deadline` (revision template): whole non-negative seconds.
pub(crate) fn progress_deadline(annotations: &Annotations) -> FieldErrors {
    duration_annotation(
        annotations,
        &[ANNOTATION_PROGRESS_DEADLINE],
        "progress-deadline",
    )
}

/// `rouse.dev/request-body-buffer` (revision template): a non-negative quantity of bytes.
pub(crate) fn request_body_buffer(annotations: &Annotations) -> FieldErrors {
    match annotations.get(ANNOTATION_REQUEST_BODY_BUFFER) {
        Some(v) if !is_quantity(v) || v.starts_with('-') || v.contains(['m', 'u', 'n']) => {
            FieldError::new(
                format!("invalid value: {v}: want a whole number of bytes, such as 1Mi or 65536"),
                &[ANNOTATION_REQUEST_BODY_BUFFER],
            )
            .into()
        }
        _ => FieldErrors::new(),
    }
}

/// A Go duration annotation at whole-second precision; `keys` in priority order.
fn duration_annotation(annotations: &Annotations, keys: &[&str], what: &str) -> FieldErrors {
    let Some((key, v)) = keys
        .iter()
        .find_map(|k| annotations.get(*k).map(|v| (*k, v.as_str())))
    else {
        return FieldErrors::new();
    };
    if v.is_empty() {
        return FieldErrors::new();
    }
    // Go parses a leading sign; Rouse's parser takes only non-negative durations.
    let (negative, body) = match v.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, v.strip_prefix('+').unwrap_or(v)),
    };
    let d = match parse_go_duration(body) {
        Ok(d) if !body.starts_with(['-', '+']) => d,
        _ => return FieldError::invalid_value(v, key).into(),
    };
    if !whole_seconds(d) {
        return FieldError::new(format!("{what}={v} is not at second precision"), &[key]).into();
    }
    if negative && !d.is_zero() {
        return FieldError::new(format!("{what}={v} must be positive"), &[key]).into();
    }
    FieldErrors::new()
}

/// True when `d` is a whole number of seconds (within float error of the parser).
fn whole_seconds(d: Duration) -> bool {
    let ns = d.subsec_nanos();
    !(1_000..=999_999_000).contains(&ns)
}

/// The queue-proxy sidecar annotations: the deprecated resource percentage (0.1..100) and the
/// explicit resource quantities. Paths are Knative's: `metadata.annotations.[key]`.
pub(crate) fn queue_sidecar_annotations(annotations: &Annotations) -> FieldErrors {
    const PREFIX: &str = "queue.sidecar.serving.knative.dev/";
    let path = |k: &str| format!("metadata.annotations.[{k}]");
    let mut errs = FieldErrors::new();
    let pct = [
        format!("{PREFIX}resource-percentage"),
        format!("{PREFIX}resourcePercentage"),
    ];
    if let Some((k, v)) = pct
        .iter()
        .find_map(|k| annotations.get(k).map(|v| (k.as_str(), v.as_str())))
    {
        match v.parse::<f64>() {
            Err(_) => errs.push(FieldError::invalid_value(v, &path(k))),
            Ok(x) if !(0.1..=100.0).contains(&x) => {
                errs.push(FieldError::out_of_bounds(x, 0.1, 100, &path(k)))
            }
            Ok(_) => {}
        }
    }
    for res in ["cpu", "memory", "ephemeral-storage"] {
        for kind in ["request", "limit"] {
            let k = format!("{PREFIX}{res}-resource-{kind}");
            if let Some(v) = annotations.get(&k)
                && !is_quantity(v)
            {
                errs.push(FieldError::invalid_value(v, &path(&k)));
            }
        }
    }
    errs
}

/// `networking.knative.dev/*` annotations on a template must be ones Knative knows.
pub(crate) fn networking_annotations(annotations: &Annotations) -> FieldErrors {
    const ALLOWED: &[&str] = &[
        "networking.knative.dev/ingress.class",
        "networking.knative.dev/ingress-class",
        "networking.knative.dev/certificate.class",
        "networking.knative.dev/certificate-class",
        "networking.knative.dev/disableAutoTLS",
        "networking.knative.dev/disable-auto-tls",
        "networking.knative.dev/disable-external-domain-tls",
        "networking.knative.dev/httpOption",
        "networking.knative.dev/http-protocol",
    ];
    let mut errs = FieldErrors::new();
    for key in annotations.keys() {
        if key.starts_with("networking.knative.dev") && !ALLOWED.contains(&key.as_str()) {
            errs.push(FieldError::new(
                format!("invalid key name {}", quote(key)),
                &[""],
            ));
        }
    }
    errs
}

/// A `label` naming an owner must match an owner reference of `kind` (path `labels.<label>`).
pub(crate) fn label_matches_owner(meta: &ObjectMeta, label: &str, kind: &str) -> FieldErrors {
    match meta.labels.get(label) {
        Some(v)
            if !meta
                .owner_references
                .iter()
                .any(|o| o.kind == kind && &o.name == v) =>
        {
            FieldError::missing_field(&[label])
                .via_field("labels")
                .into()
        }
        _ => FieldErrors::new(),
    }
}

/// On update: `creator` never changes, and `lastModifier` changes only with the spec.
/// Paths are annotation keys (the caller prefixes `metadata.annotations`).
pub(crate) fn creator_and_modifier(
    old: &ObjectMeta,
    new: &ObjectMeta,
    spec_unchanged: bool,
) -> FieldErrors {
    let mut errs = FieldErrors::new();
    let get = |m: &ObjectMeta, k: &str| m.annotations.get(k).cloned().unwrap_or_default();
    if get(old, ANNOTATION_CREATOR) != get(new, ANNOTATION_CREATOR) {
        errs.push(FieldError::new(
            "annotation value is immutable",
            &[ANNOTATION_CREATOR],
        ));
    }
    let modifier = get(new, ANNOTATION_LAST_MODIFIER);
    if spec_unchanged && get(old, ANNOTATION_LAST_MODIFIER) != modifier {
        errs.push(FieldError::invalid_value(
            modifier,
            ANNOTATION_LAST_MODIFIER,
        ));
    }
    errs
}

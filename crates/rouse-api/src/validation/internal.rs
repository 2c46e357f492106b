//! The internal kinds only the controller writes — PodAutoscaler, ServerlessService and
//! Ingress — checked as Knative's webhook checks them, so a hand-edited or foreign object is
//! refused with Knative's message instead of confusing the reconcilers.

use super::metadata;
use crate::autoscaling::annotations as autoscaling_annotations;
use crate::autoscaling::{ObjectReference, PodAutoscaler};
use crate::config::Config;
use crate::error::{FieldError, FieldErrors};
use crate::ingress::{HttpIngressPath, Ingress, IngressRule, IngressTls};
use crate::networking::ServerlessService;
use crate::serving::IntOrString;

/// The protocols a PodAutoscaler or ServerlessService may name.
const PROTOCOLS: [&str; 2] = ["http1", "h2c"];

/// Validates a PodAutoscaler on create or update.
pub fn validate_pod_autoscaler(
    new: &PodAutoscaler,
    _old: Option<&PodAutoscaler>,
    cfg: &Config,
) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::new();
    let mut meta = metadata::object_name(&new.metadata);
    meta.extend_via(
        "annotations",
        autoscaling_annotations::validate(&new.metadata.annotations, &cfg.autoscaler),
    );
    errs.extend_via("metadata", meta);
    let spec = &new.spec;
    if *spec == Default::default() {
        errs.push(FieldError::missing_field(&["spec"]));
        return errs.into_result();
    }
    let mut s = FieldErrors::new();
    s.extend_via("scaleTargetRef", object_reference(&spec.scale_target_ref));
    if let Some(cc) = spec.container_concurrency {
        let max = cfg.defaults.container_concurrency_max_limit;
        if !(0..=max).contains(&cc) {
            s.push(FieldError::out_of_bounds(
                cc,
                0,
                max,
                "containerConcurrency",
            ));
        }
    }
    s.extend(protocol(&spec.protocol_type));
    errs.extend_via("spec", s);
    errs.into_result()
}

/// Validates a ServerlessService on create or update (its `mode` is checked by decoding).
pub fn validate_serverless_service(
    new: &ServerlessService,
    _old: Option<&ServerlessService>,
    _cfg: &Config,
) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::new();
    errs.extend_via("metadata", metadata::object_name(&new.metadata));
    let spec = &new.spec;
    let mut s = FieldErrors::new();
    if spec.num_activators < 0 {
        s.push(FieldError::invalid_value(
            spec.num_activators,
            "numActivators",
        ));
    }
    s.extend_via("objectRef", object_reference(&spec.object_ref));
    s.extend(protocol(&spec.protocol_type));
    errs.extend_via("spec", s);
    errs.into_result()
}

/// Validates an Ingress on create or update.
pub fn validate_ingress(new: &Ingress, _old: Option<&Ingress>) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::new();
    let spec = &new.spec;
    if *spec == Default::default() {
        errs.push(FieldError::missing_field(&["spec"]));
        return errs.into_result();
    }
    let mut s = FieldErrors::new();
    if spec.rules.is_empty() {
        s.push(FieldError::missing_field(&["rules"]));
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        s.extend_via(&format!("rules[{i}]"), ingress_rule(rule));
    }
    for (i, tls) in spec.tls.iter().enumerate() {
        s.extend_via(&format!("tls[{i}]"), ingress_tls(tls));
    }
    if !matches!(spec.http_option.as_str(), "" | "Enabled" | "Redirected") {
        s.push(FieldError::invalid_value(&spec.http_option, "httpOption"));
    }
    errs.extend_via("spec", s);
    errs.into_result()
}

/// One `missing field(s)` error naming each field that is missing (none: no error).
fn missing_fields(fields: &[(&str, bool)]) -> FieldErrors {
    let missing: Vec<&str> = fields
        .iter()
        .filter(|(_, missing)| *missing)
        .map(|(f, _)| *f)
        .collect();
    if missing.is_empty() {
        FieldErrors::new()
    } else {
        FieldError::missing_field(&missing).into()
    }
}

/// `apiVersion`, `kind` and `name` all given.
fn object_reference(r: &ObjectReference) -> FieldErrors {
    missing_fields(&[
        ("apiVersion", r.api_version.is_empty()),
        ("kind", r.kind.is_empty()),
        ("name", r.name.is_empty()),
    ])
}

fn protocol(p: &str) -> FieldErrors {
    if PROTOCOLS.contains(&p) {
        FieldErrors::new()
    } else {
        FieldError::invalid_value(p, "protocolType").into()
    }
}

fn ingress_rule(rule: &IngressRule) -> FieldErrors {
    let mut errs = FieldErrors::new();
    if rule.hosts.is_empty() {
        errs.push(FieldError::missing_field(&["hosts"]));
    }
    if !matches!(rule.visibility.as_str(), "" | "ExternalIP" | "ClusterLocal") {
        errs.push(FieldError::invalid_value(&rule.visibility, "visibility"));
    }
    match &rule.http {
        None => errs.push(FieldError::missing_field(&["http"])),
        Some(http) if http.paths.is_empty() => {
            errs.push(FieldError::missing_field(&["http.paths"]))
        }
        Some(http) => {
            for (i, path) in http.paths.iter().enumerate() {
                errs.extend_via(&format!("http.paths[{i}]"), ingress_path(path));
            }
        }
    }
    errs
}

fn ingress_path(path: &HttpIngressPath) -> FieldErrors {
    let mut errs = FieldErrors::new();
    if path.splits.is_empty() {
        errs.push(FieldError::missing_field(&["splits"]));
    }
    let mut total = 0;
    for (i, split) in path.splits.iter().enumerate() {
        let mut e = FieldErrors::new();
        if !(0..=100).contains(&split.percent) {
            e.push(FieldError::invalid_value(split.percent, "percent"));
        }
        total += split.percent;
        let no_port = match &split.service_port {
            IntOrString::Int(p) => *p == 0,
            IntOrString::String(s) => s.is_empty(),
        };
        e.extend(missing_fields(&[
            ("serviceNamespace", split.service_namespace.is_empty()),
            ("serviceName", split.service_name.is_empty()),
            ("servicePort", no_port),
        ]));
        errs.extend_via(&format!("splits[{i}]"), e);
    }
    // One split may leave its percent out (it takes everything).
    if (path.splits.len() != 1 || total != 0) && total != 100 {
        errs.push(FieldError::new(
            format!("Traffic split percentage must total to 100, but was {total}"),
            &["splits"],
        ));
    }
    errs
}

fn ingress_tls(tls: &IngressTls) -> FieldErrors {
    missing_fields(&[
        ("hosts", tls.hosts.is_empty()),
        ("secretName", tls.secret_name.is_empty()),
        ("secretNamespace", tls.secret_namespace.is_empty()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pa(spec: serde_json::Value) -> PodAutoscaler {
        serde_json::from_value(
            json!({"apiVersion": "autoscaling.internal.knative.dev/v1alpha1",
            "kind": "PodAutoscaler", "metadata": {"name": "cart-00001", "namespace": "shop"},
            "spec": spec}),
        )
        .unwrap()
    }

    fn text(r: Result<(), FieldErrors>) -> String {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn pod_autoscalers() {
        let cfg = Config::default();
        let good = json!({"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                          "name": "cart-00001-deployment"},
                          "containerConcurrency": 10, "protocolType": "http1"});
        assert_eq!(text(validate_pod_autoscaler(&pa(good), None, &cfg)), "");
        assert_eq!(
            text(validate_pod_autoscaler(&pa(json!({})), None, &cfg)),
            "missing field(s): spec"
        );
        let bad = json!({"scaleTargetRef": {"kind": "Deployment"},
                         "containerConcurrency": 1001, "protocolType": "h3"});
        let errs = validate_pod_autoscaler(&pa(bad), None, &cfg).unwrap_err();
        assert!(
            errs.has("missing field(s)", "spec.scaleTargetRef.apiVersion"),
            "{errs}"
        );
        assert!(
            errs.has("missing field(s)", "spec.scaleTargetRef.name"),
            "{errs}"
        );
        assert!(
            errs.has("expected 0 <= 1001 <= 1000", "spec.containerConcurrency"),
            "{errs}"
        );
        assert!(errs.has("invalid value: h3", "spec.protocolType"), "{errs}");
    }

    #[test]
    fn serverless_services() {
        let sks = |spec: serde_json::Value| -> ServerlessService {
            serde_json::from_value(json!({"apiVersion": "networking.internal.knative.dev/v1alpha1",
                "kind": "ServerlessService", "metadata": {"name": "cart-00001", "namespace": "shop"},
                "spec": spec}))
            .unwrap()
        };
        let cfg = Config::default();
        let good = json!({"mode": "Proxy", "numActivators": 2, "protocolType": "h2c",
                          "objectRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"}});
        assert_eq!(
            text(validate_serverless_service(&sks(good), None, &cfg)),
            ""
        );
        let bad = json!({"mode": "Serve", "numActivators": -1, "objectRef": {}});
        let errs = validate_serverless_service(&sks(bad), None, &cfg).unwrap_err();
        assert!(
            errs.has("invalid value: -1", "spec.numActivators"),
            "{errs}"
        );
        assert!(
            errs.has("missing field(s)", "spec.objectRef.kind"),
            "{errs}"
        );
        assert!(errs.has("invalid value: ", "spec.protocolType"), "{errs}");
    }

    #[test]
    fn ingresses() {
        let ing = |spec: serde_json::Value| -> Ingress {
            serde_json::from_value(json!({"apiVersion": "networking.internal.knative.dev/v1alpha1",
                "kind": "Ingress", "metadata": {"name": "cart", "namespace": "shop"}, "spec": spec}))
            .unwrap()
        };
        let split = |name: &str, percent: i64| {
            json!({"serviceNamespace": "shop", "serviceName": name, "servicePort": 80,
                   "percent": percent})
        };
        let rule = |splits: serde_json::Value| {
            json!({"hosts": ["cart.shop.example.com"], "visibility": "ExternalIP",
                   "http": {"paths": [{"splits": splits}]}})
        };
        let good = json!({"rules": [rule(json!([split("a", 40), split("b", 60)]))],
                          "httpOption": "Enabled"});
        assert_eq!(text(validate_ingress(&ing(good), None)), "");
        // One split may leave its percent out.
        let one = json!({"rules": [rule(json!([split("a", 0)]))]});
        assert_eq!(text(validate_ingress(&ing(one), None)), "");
        assert_eq!(
            text(validate_ingress(&ing(json!({})), None)),
            "missing field(s): spec"
        );
        assert_eq!(
            text(validate_ingress(
                &ing(json!({"httpOption": "Enabled"})),
                None
            )),
            "missing field(s): spec.rules"
        );
        let bad = json!({
            "rules": [rule(json!([split("a", 40), split("", 50)])),
                      {"visibility": "Everywhere"}],
            "tls": [{"hosts": ["x"]}],
            "httpOption": "Sometimes",
        });
        let errs = validate_ingress(&ing(bad), None).unwrap_err();
        for (message, path) in [
            (
                "Traffic split percentage must total to 100, but was 90",
                "spec.rules[0].http.paths[0].splits",
            ),
            (
                "missing field(s)",
                "spec.rules[0].http.paths[0].splits[1].serviceName",
            ),
            ("missing field(s)", "spec.rules[1].hosts"),
            ("missing field(s)", "spec.rules[1].http"),
            ("invalid value: Everywhere", "spec.rules[1].visibility"),
            ("missing field(s)", "spec.tls[0].secretName"),
            ("invalid value: Sometimes", "spec.httpOption"),
        ] {
            assert!(errs.has(message, path), "{message} at {path}: {errs}");
        }
    }
}

//! DomainMapping rules: the name is the domain (Kubernetes' `IsFullyQualifiedDomainName`, with
//! its messages, inside Knative's), the reference is Knative's `KReference`.

use crate::domainmapping::{KReference, SecretTls};
use crate::error::{FieldError, FieldErrors};
use crate::meta::ObjectMeta;

use super::names::{dns1123_label_errors, dns1123_subdomain_errors, quote};

/// `metadata` of a DomainMapping (paths relative to it).
pub(super) fn mapping_name(meta: &ObjectMeta, cluster_domain: &str) -> FieldErrors {
    let mut errs = FieldErrors::new();
    if !meta.generate_name.is_empty() {
        errs.push(FieldError::disallowed(&["generateName"]));
    }
    let name = &meta.name;
    if name.is_empty() && !meta.generate_name.is_empty() {
        return errs;
    }
    if let Some(why) = fqdn_error(name) {
        errs.push(FieldError::new(
            format!("invalid name {}: {why}", quote(name)),
            &["name"],
        ));
    }
    if name.ends_with(&format!(".{cluster_domain}")) {
        errs.push(FieldError::new(
            format!(
                "invalid name {}: must not be a subdomain of cluster local domain {}",
                quote(name),
                quote(cluster_domain)
            ),
            &["name"],
        ));
    }
    errs
}

/// Kubernetes' `IsFullyQualifiedDomainName(name)` error, as its aggregate prints it.
fn fqdn_error(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("name: Required value".to_string());
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let invalid =
        |value: &str, why: String| format!("name: Invalid value: {}: {why}", quote(value));
    let errs = dns1123_subdomain_errors(name);
    if !errs.is_empty() {
        return Some(invalid(name, errs.join(",")));
    }
    if name.split('.').count() < 2 {
        return Some(invalid(
            name,
            "should be a domain with at least two segments separated by dots".to_string(),
        ));
    }
    name.split('.').find_map(|label| {
        let errs = dns1123_label_errors(label);
        (!errs.is_empty()).then(|| invalid(label, errs.join(",")))
    })
}

/// `spec.ref` (paths relative to it): Knative's `KReference` checks within the mapping's
/// namespace.
pub(super) fn reference(r: &KReference, parent_namespace: &str) -> FieldErrors {
    let mut errs = FieldErrors::new();
    let missing: Vec<&str> = [
        ("name", r.name.is_empty()),
        ("apiVersion", r.api_version.is_empty()),
        ("kind", r.kind.is_empty()),
    ]
    .into_iter()
    .filter_map(|(field, empty)| empty.then_some(field))
    .collect();
    if !missing.is_empty() {
        errs.push(FieldError::missing_field(&missing));
    }
    if !r.namespace.is_empty() && !parent_namespace.is_empty() && r.namespace != parent_namespace {
        errs.push(
            FieldError::new("mismatched namespaces", &["namespace"]).with_details(format!(
                "parent namespace: {} does not match ref: {}",
                quote(parent_namespace),
                quote(&r.namespace)
            )),
        );
    }
    errs
}

/// `spec.tls` (paths relative to it): the secret's name.
pub(super) fn secret(tls: &SecretTls) -> FieldErrors {
    if tls.secret_name.is_empty() {
        return FieldError::missing_field(&["secretName"]).into();
    }
    let msgs = dns1123_subdomain_errors(&tls.secret_name);
    if msgs.is_empty() {
        return FieldErrors::new();
    }
    FieldError::invalid_value(msgs.join(", "), "secretName").into()
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::defaults::default_domain_mapping;
    use crate::domainmapping::{DomainMapping, SecretTls};
    use crate::validation::validate_domain_mapping;

    /// A defaulted mapping of `name` in `default` to the Knative Service `hello`.
    fn mapping(name: &str) -> DomainMapping {
        let mut dm = DomainMapping::default();
        dm.metadata.name = name.into();
        dm.metadata.namespace = "default".into();
        dm.spec.ref_.kind = "Service".into();
        dm.spec.ref_.name = "hello".into();
        dm.spec.ref_.api_version = "serving.knative.dev/v1".into();
        default_domain_mapping(&mut dm, None, &Config::default());
        dm
    }

    fn errors(dm: &DomainMapping) -> String {
        validate_domain_mapping(dm, None, &Config::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn a_complete_mapping_is_valid_and_its_ref_takes_the_namespace() {
        let dm = mapping("app.example.com");
        assert_eq!(dm.spec.ref_.namespace, "default");
        assert_eq!(errors(&dm), "");
        // A trailing dot is a fully qualified name too.
        assert_eq!(errors(&mapping("app.example.com.")), "");
    }

    #[test]
    fn the_name_must_be_a_domain_with_two_segments() {
        assert_eq!(
            errors(&mapping("localhost")),
            "invalid name \"localhost\": name: Invalid value: \"localhost\": should be a domain with at least two segments separated by dots: metadata.name"
        );
        let bad = errors(&mapping("App_1.example.com"));
        assert!(
            bad.starts_with("invalid name \"App_1.example.com\": name: Invalid value: \"App_1.example.com\": a lowercase RFC 1123 subdomain"),
            "{bad}"
        );
        assert!(bad.ends_with(": metadata.name"), "{bad}");
    }

    #[test]
    fn the_name_must_not_be_cluster_local() {
        assert_eq!(
            errors(&mapping("hello.default.svc.cluster.local")),
            "invalid name \"hello.default.svc.cluster.local\": must not be a subdomain of cluster local domain \"cluster.local\": metadata.name"
        );
    }

    #[test]
    fn generate_name_is_refused() {
        let mut dm = mapping("");
        dm.metadata.generate_name = "app-".into();
        assert_eq!(
            errors(&dm),
            "must not set the field(s): metadata.generateName"
        );
    }

    #[test]
    fn the_ref_must_be_complete_and_in_the_same_namespace() {
        let mut dm = mapping("app.example.com");
        dm.spec.ref_.name.clear();
        dm.spec.ref_.kind.clear();
        assert_eq!(
            errors(&dm),
            "missing field(s): spec.ref.name, spec.ref.kind"
        );
        let mut dm = mapping("app.example.com");
        dm.spec.ref_.namespace = "other".into();
        assert_eq!(
            errors(&dm),
            "mismatched namespaces: spec.ref.namespace\nparent namespace: \"default\" does not match ref: \"other\""
        );
    }

    #[test]
    fn tls_names_a_secret() {
        let mut dm = mapping("app.example.com");
        dm.spec.tls = Some(SecretTls::default());
        assert_eq!(errors(&dm), "missing field(s): spec.tls.secretName");
        dm.spec.tls = Some(SecretTls {
            secret_name: "Not_A_Name".into(),
        });
        assert!(
            errors(&dm).ends_with(": spec.tls.secretName"),
            "{}",
            errors(&dm)
        );
        dm.spec.tls = Some(SecretTls {
            secret_name: "app-cert".into(),
        });
        assert_eq!(errors(&dm), "");
    }

    #[test]
    fn updates_keep_the_creator() {
        let old = mapping("app.example.com");
        let mut new = old.clone();
        new.metadata
            .annotations
            .insert(crate::serving::ANNOTATION_CREATOR.into(), "mallory".into());
        let err = validate_domain_mapping(&new, Some(&old), &Config::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "annotation value is immutable: metadata.annotations.serving.knative.dev/creator"
        );
    }
}

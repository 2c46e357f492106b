//! Validation, as Knative's webhook applies it (reference §1.5, §2.1): every rule with
//! Knative's message and field path, so `rouse apply` refuses what `kubectl apply` against
//! Knative would, in the same words.
//!
//! Validate after defaulting (as the webhook does): some rules, such as a readiness probe's
//! `successThreshold >= 1`, hold only for defaulted objects.

mod diff;
mod domain;
mod image;
mod internal;
mod metadata;
mod names;
mod podspec;
mod probes;
mod security;
mod traffic;
mod volumes;

#[cfg(test)]
mod tests;

pub use internal::{validate_ingress, validate_pod_autoscaler, validate_serverless_service};
pub use names::is_dns1035_label;

use crate::autoscaling::annotations as autoscaling_annotations;
use crate::config::Config;
use crate::domainmapping::DomainMapping;
use crate::error::{FieldError, FieldErrors};
use crate::meta::ObjectMeta;
use crate::serving::{
    Configuration, LABEL_CONFIGURATION, LABEL_SERVICE, Revision, RevisionTemplateSpec, Route,
    Service,
};
use names::{dns1035_label_errors, dns1035_prefix_errors, go_list, quote};

/// Validates a Service on create (`old` is `None`) or update.
pub fn validate_service(
    new: &Service,
    old: Option<&Service>,
    cfg: &Config,
) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::new();
    let mut meta = metadata::object_name(&new.metadata);
    meta.extend_via(
        "annotations",
        metadata::no_autoscaling_annotations(&new.metadata.annotations),
    );
    meta.extend_via(
        "annotations",
        metadata::rollout_duration(&new.metadata.annotations),
    );
    errs.extend_via("metadata", meta);
    errs.extend_via(
        "spec.template",
        template(&new.spec.template, &new.metadata, cfg),
    );
    errs.extend_via("spec.traffic", traffic::traffic(&new.spec.traffic, true));
    if let Some(old) = old {
        errs.extend_via(
            "metadata.annotations",
            metadata::creator_and_modifier(&old.metadata, &new.metadata, old.spec == new.spec),
        );
        errs.extend_via(
            "spec.template",
            verify_name_change(&new.spec.template, &old.spec.template),
        );
    }
    errs.into_result()
}

/// Validates a Configuration on create or update.
pub fn validate_configuration(
    new: &Configuration,
    old: Option<&Configuration>,
    cfg: &Config,
) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::new();
    let mut meta = metadata::object_name(&new.metadata);
    meta.extend_via(
        "annotations",
        metadata::no_autoscaling_annotations(&new.metadata.annotations),
    );
    meta.extend(metadata::label_matches_owner(
        &new.metadata,
        LABEL_SERVICE,
        "Service",
    ));
    errs.extend_via("metadata", meta);
    errs.extend_via(
        "spec.template",
        template(&new.spec.template, &new.metadata, cfg),
    );
    if let Some(old) = old {
        // A Service's child carries the Service's annotations; only standalone ones are checked.
        if new.metadata.owner_references.is_empty() {
            errs.extend_via(
                "metadata.annotations",
                metadata::creator_and_modifier(&old.metadata, &new.metadata, old.spec == new.spec),
            );
        }
        errs.extend_via(
            "spec.template",
            verify_name_change(&new.spec.template, &old.spec.template),
        );
    }
    errs.into_result()
}

/// Validates a Revision on create or update. On update only metadata may change: any spec
/// change is refused with a diff.
pub fn validate_revision(
    new: &Revision,
    old: Option<&Revision>,
    cfg: &Config,
) -> Result<(), FieldErrors> {
    if let Some(old) = old {
        let diff = diff::short_diff(&old.spec, &new.spec);
        if !diff.is_empty() {
            return Err(
                FieldError::new("Immutable fields changed (-old +new)", &["spec"])
                    .with_details(diff)
                    .into(),
            );
        }
    }
    let mut errs = FieldErrors::new();
    let mut meta = metadata::object_name(&new.metadata);
    // A Revision carries its autoscaling annotations itself.
    meta.extend_via(
        "annotations",
        autoscaling_annotations::validate(&new.metadata.annotations, &cfg.autoscaler),
    );
    meta.extend_via(
        "annotations",
        metadata::progress_deadline(&new.metadata.annotations),
    );
    meta.extend_via(
        "annotations",
        metadata::request_body_buffer(&new.metadata.annotations),
    );
    meta.extend(metadata::label_matches_owner(
        &new.metadata,
        LABEL_CONFIGURATION,
        "Configuration",
    ));
    errs.extend_via("metadata", meta);
    if old.is_none() {
        errs.extend_via("spec", podspec::revision_spec(&new.spec, cfg));
    }
    errs.into_result()
}

/// Validates a Route on create or update.
pub fn validate_route(new: &Route, old: Option<&Route>, cfg: &Config) -> Result<(), FieldErrors> {
    let _ = cfg;
    let mut errs = FieldErrors::new();
    let mut meta = metadata::object_name(&new.metadata);
    meta.extend_via(
        "annotations",
        metadata::no_autoscaling_annotations(&new.metadata.annotations),
    );
    meta.extend(metadata::label_matches_owner(
        &new.metadata,
        LABEL_SERVICE,
        "Service",
    ));
    meta.extend_via(
        "annotations",
        metadata::rollout_duration(&new.metadata.annotations),
    );
    errs.extend_via("metadata", meta);
    errs.extend_via("spec.traffic", traffic::traffic(&new.spec.traffic, false));
    if let Some(old) = old
        && new.metadata.owner_references.is_empty()
    {
        errs.extend_via(
            "metadata.annotations",
            metadata::creator_and_modifier(&old.metadata, &new.metadata, old.spec == new.spec),
        );
    }
    errs.into_result()
}

/// Validates a DomainMapping on create or update: its name is a fully qualified domain outside
/// the cluster-local domain, no `generateName`, `spec.ref` complete and in the mapping's own
/// namespace, and `spec.tls` names a secret.
pub fn validate_domain_mapping(
    new: &DomainMapping,
    old: Option<&DomainMapping>,
    cfg: &Config,
) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::new();
    let mut meta = domain::mapping_name(&new.metadata, &cfg.network.cluster_domain);
    if let Some(old) = old {
        meta.extend_via(
            "annotations",
            metadata::creator_and_modifier(&old.metadata, &new.metadata, old.spec == new.spec),
        );
    }
    errs.extend_via("metadata", meta);
    errs.extend_via(
        "spec.ref",
        domain::reference(&new.spec.ref_, &new.metadata.namespace),
    );
    if let Some(tls) = &new.spec.tls {
        errs.extend_via("spec.tls", domain::secret(tls));
    }
    errs.into_result()
}

/// A revision template within its parent (Service or Configuration); paths relative to the
/// template.
fn template(tpl: &RevisionTemplateSpec, parent: &ObjectMeta, cfg: &Config) -> FieldErrors {
    let mut errs = FieldErrors::new();
    let annotations = &tpl.metadata.annotations;
    errs.extend_via("spec", podspec::revision_spec(&tpl.spec, cfg));
    errs.extend_via(
        "metadata.annotations",
        autoscaling_annotations::validate(annotations, &cfg.autoscaler),
    );
    errs.extend_via(
        "metadata.annotations",
        metadata::networking_annotations(annotations),
    );
    errs.extend(revision_name(&tpl.metadata, parent));
    errs.extend(metadata::queue_sidecar_annotations(annotations));
    errs.extend_via(
        "metadata.annotations",
        metadata::request_body_buffer(annotations),
    );
    errs.extend_via(
        "metadata.annotations",
        metadata::progress_deadline(annotations),
    );
    errs
}

/// A bring-your-own revision name: a DNS-1035 label starting with `<parent>-`, and not when
/// the parent itself is named by `generateName`.
fn revision_name(tpl: &ObjectMeta, parent: &ObjectMeta) -> FieldErrors {
    if !tpl.generate_name.is_empty() {
        let msgs = dns1035_prefix_errors(&tpl.generate_name);
        if !msgs.is_empty() {
            return FieldError::invalid_value(
                format!("not a DNS 1035 label prefix: {}", go_list(&msgs)),
                "metadata.generateName",
            )
            .into();
        }
    }
    let name = &tpl.name;
    if name.is_empty() {
        return FieldErrors::new();
    }
    let msgs = dns1035_label_errors(name);
    if !msgs.is_empty() {
        return FieldError::invalid_value(
            format!("not a DNS 1035 label: {}", go_list(&msgs)),
            "metadata.name",
        )
        .into();
    }
    if parent.name.is_empty() && !parent.generate_name.is_empty() {
        return FieldError::disallowed(&["metadata.name"]).into();
    }
    let prefix = format!("{}-", parent.name);
    if !name.starts_with(&prefix) {
        return FieldError::invalid_value(
            format!("{} must have prefix {}", quote(name), quote(&prefix)),
            "metadata.name",
        )
        .into();
    }
    FieldErrors::new()
}

/// With a bring-your-own name, a changed template needs a new name (else the new template
/// would have to become a revision that already exists).
fn verify_name_change(new: &RevisionTemplateSpec, old: &RevisionTemplateSpec) -> FieldErrors {
    if new.metadata.name.is_empty() || new.metadata.name != old.metadata.name {
        return FieldErrors::new();
    }
    let diff = diff::short_diff(old, new);
    if diff.is_empty() {
        return FieldErrors::new();
    }
    FieldError::new(
        "Saw the following changes without a name change (-old +new)",
        &["metadata.name"],
    )
    .with_details(diff)
    .into()
}

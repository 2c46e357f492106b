//! `serving.knative.dev/v1beta1` DomainMapping: a custom domain (the object's name) served by
//! a Knative Service or Route in the same namespace. One namespace owns a domain at a time
//! (Knative's ClusterDomainClaim); the gateway answers the domain by forwarding to the target
//! with the Host rewritten to the target's own host.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::condition::Condition;
use crate::kind::Kind;
use crate::meta::{KindOf, Object};
use crate::serving::Addressable;

/// A DomainMapping: `metadata.name` is the domain, `spec.ref` what serves it.
pub type DomainMapping = Object<DomainMappingSpec, DomainMappingStatus>;

impl KindOf for DomainMapping {
    const OBJECT_KIND: Kind = Kind::DomainMapping;
}

/// Condition: the domain's claim belongs to this mapping's namespace.
pub const CONDITION_DOMAIN_CLAIMED: &str = "DomainClaimed";
/// Condition: `spec.ref` names an object that can be reached.
pub const CONDITION_REFERENCE_RESOLVED: &str = "ReferenceResolved";
/// Condition: the ingress (the gateway) serves the domain.
pub const CONDITION_INGRESS_READY: &str = "IngressReady";
/// Condition: the domain's certificate is in place (or none is needed).
pub const CONDITION_CERTIFICATE_PROVISIONED: &str = "CertificateProvisioned";
/// The conditions `Ready` is derived from, in Knative's order.
pub const READY_DEPENDENTS: [&str; 4] = [
    CONDITION_DOMAIN_CLAIMED,
    CONDITION_REFERENCE_RESOLVED,
    CONDITION_INGRESS_READY,
    CONDITION_CERTIFICATE_PROVISIONED,
];

/// `DomainMapping.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DomainMappingSpec {
    /// The Addressable the domain is mapped to: a Knative Service or Route.
    #[serde(default, rename = "ref")]
    pub ref_: KReference,
    /// Terminate TLS for the domain with an existing secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<SecretTls>,
}

/// Knative's `KReference`: an object by kind, name and (same) namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KReference {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default)]
    pub api_version: String,
}

/// `spec.tls`: the secret holding the domain's certificate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretTls {
    #[serde(default)]
    pub secret_name: String,
}

/// `DomainMapping.status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct DomainMappingStatus {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub observed_generation: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// `http://{domain}` (`https://` with `spec.tls`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Addressable>,
}

/// Which of `mappings` holds `domain`'s claim: of those named `domain`, the oldest, then the
/// first by namespace (Knative's ClusterDomainClaim, created by the first mapping and
/// released when it goes).
pub fn claim_holder<'a>(
    mappings: impl IntoIterator<Item = &'a DomainMapping>,
    domain: &str,
) -> Option<&'a DomainMapping> {
    mappings
        .into_iter()
        .filter(|m| m.metadata.name == domain)
        .min_by(|a, b| {
            (&a.metadata.creation_timestamp, &a.metadata.namespace)
                .cmp(&(&b.metadata.creation_timestamp, &b.metadata.namespace))
        })
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

crate::condition::impl_conditions!(DomainMappingStatus);

#[cfg(test)]
mod tests {
    use super::*;

    fn dm(ns: &str, name: &str, created: &str) -> DomainMapping {
        let mut m = DomainMapping::default();
        m.metadata.namespace = ns.into();
        m.metadata.name = name.into();
        m.metadata.creation_timestamp = created.into();
        m
    }

    #[test]
    fn the_oldest_mapping_holds_the_claim_then_the_first_namespace() {
        let all = [
            dm("b", "app.example.com", "2026-01-01T00:00:01Z"),
            dm("a", "app.example.com", "2026-01-01T00:00:02Z"),
            dm("c", "other.example.com", "2026-01-01T00:00:00Z"),
        ];
        let holder = claim_holder(&all, "app.example.com").unwrap();
        assert_eq!(holder.metadata.namespace, "b");
        let tied = [
            dm("b", "app.example.com", "2026-01-01T00:00:01Z"),
            dm("a", "app.example.com", "2026-01-01T00:00:01Z"),
        ];
        assert_eq!(
            claim_holder(&tied, "app.example.com")
                .unwrap()
                .metadata
                .namespace,
            "a"
        );
        assert!(claim_holder(&all, "none.example.com").is_none());
    }
}

//! The Knative `Ingress` a DomainMapping asks for: one external rule for the domain whose only
//! path sends everything to the target's Service, with the Host rewritten to the target's
//! cluster-local host (`{name}.{namespace}.svc.{cluster-domain}`) and the domain kept in
//! `K-Original-Host`; with `spec.tls`, the secret terminates TLS for the domain.

use std::collections::BTreeMap;

use rouse_api::domainmapping::DomainMapping;
use rouse_api::ingress::{
    ANNOTATION_CLASS, HttpIngressPath, HttpIngressRuleValue, Ingress, IngressBackendSplit,
    IngressRule, IngressSpec, IngressTls,
};
use rouse_api::meta::Resource;
use rouse_api::serving::IntOrString;
use rouse_controller::names::child_name;

use crate::route::IngressConfig;

/// Label on the Ingress naming its DomainMapping's UID.
pub const LABEL_DOMAIN_MAPPING_UID: &str = "serving.knative.dev/domainMappingUID";
/// Label on the Ingress naming its DomainMapping's namespace.
pub const LABEL_DOMAIN_MAPPING_NAMESPACE: &str = "serving.knative.dev/domainMappingNamespace";
/// Header carrying the domain the client asked for past the Host rewrite.
pub const HEADER_ORIGINAL_HOST: &str = "K-Original-Host";
/// Annotation kubectl leaves on applied objects; not copied to the Ingress.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The host the mapping's target answers to inside the cluster (the Ingress's `rewriteHost`).
pub fn target_host(dm: &DomainMapping, cfg: &IngressConfig) -> String {
    format!(
        "{}.{}.svc.{}",
        dm.spec.ref_.name, dm.metadata.namespace, cfg.network.cluster_domain
    )
}

/// The Ingress for a DomainMapping, named after it (hashed past 63 characters) and owned by it.
pub fn ingress(dm: &DomainMapping, cfg: &IngressConfig) -> Ingress {
    let ns = &dm.metadata.namespace;
    let domain = &dm.metadata.name;
    let mut ing = Ingress {
        api_version: rouse_api::ingress::API_VERSION.into(),
        kind: rouse_api::ingress::KIND.into(),
        ..Default::default()
    };
    ing.metadata.name = child_name(domain, "");
    ing.metadata.namespace = ns.clone();
    let mut annotations: BTreeMap<String, String> = dm
        .metadata
        .annotations
        .iter()
        .filter(|(k, _)| k.as_str() != LAST_APPLIED)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    annotations
        .entry(ANNOTATION_CLASS.to_string())
        .or_insert_with(|| cfg.network.ingress_class.clone());
    ing.metadata.annotations = annotations;
    let mut labels = dm.metadata.labels.clone();
    labels.insert(
        LABEL_DOMAIN_MAPPING_UID.to_string(),
        dm.metadata.uid.clone(),
    );
    labels.insert(LABEL_DOMAIN_MAPPING_NAMESPACE.to_string(), ns.clone());
    ing.metadata.labels = labels;
    ing.metadata.owner_references = vec![dm.owner_ref()];
    ing.spec = IngressSpec {
        tls: dm
            .spec
            .tls
            .iter()
            .map(|t| IngressTls {
                hosts: vec![domain.clone()],
                secret_name: t.secret_name.clone(),
                secret_namespace: ns.clone(),
            })
            .collect(),
        rules: vec![IngressRule {
            hosts: vec![domain.clone()],
            visibility: "ExternalIP".into(),
            http: Some(HttpIngressRuleValue {
                paths: vec![HttpIngressPath {
                    rewrite_host: target_host(dm, cfg),
                    splits: vec![IngressBackendSplit {
                        service_namespace: ns.clone(),
                        service_name: dm.spec.ref_.name.clone(),
                        service_port: IntOrString::Int(80),
                        percent: 100,
                        append_headers: BTreeMap::from([(
                            HEADER_ORIGINAL_HOST.to_string(),
                            domain.clone(),
                        )]),
                    }],
                    ..Default::default()
                }],
            }),
        }],
        http_option: if cfg.network.http_protocol == "redirected" {
            "Redirected".into()
        } else {
            "Enabled".into()
        },
    };
    rouse_api::defaults::default_ingress(&mut ing);
    ing
}

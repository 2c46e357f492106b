//! `networking.internal.knative.dev/v1alpha1` Ingress (Knative's "KIngress"): the routing a
//! Route asks of an ingress implementation — hosts, path rules, weighted splits over revisions'
//! public services and the headers appended on the way. Rouse's gateway serves the class
//! `rouse.ingress.networking.knative.dev`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::condition::Condition;
use crate::meta::Object;
use crate::serving::IntOrString;

/// A Knative Ingress: what one Route asks of the ingress.
pub type Ingress = Object<IngressSpec, IngressStatus>;

/// `apiVersion` of the Ingress.
pub const API_VERSION: &str = "networking.internal.knative.dev/v1alpha1";
/// `kind` of the Ingress.
pub const KIND: &str = "Ingress";
/// Annotation naming the ingress class that serves an Ingress.
pub const ANNOTATION_CLASS: &str = "networking.knative.dev/ingress.class";
/// The class Rouse's gateway serves.
pub const ROUSE_CLASS: &str = "rouse.ingress.networking.knative.dev";

/// `Ingress.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressSpec {
    /// TLS settings per host set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<IngressTls>,
    /// Routing rules; a request takes the first rule whose hosts match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<IngressRule>,
    /// `Enabled` (serve plain HTTP) or `Redirected` (redirect it to HTTPS).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub http_option: String,
}

/// TLS for a set of hosts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressTls {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_namespace: String,
}

/// One rule: hosts, their visibility and the HTTP paths under them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// `ExternalIP` or `ClusterLocal`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub visibility: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpIngressRuleValue>,
}

/// The paths of a rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpIngressRuleValue {
    #[serde(default)]
    pub paths: Vec<HttpIngressPath>,
}

/// One path: an optional header match, the splits and the headers appended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpIngressPath {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rewrite_host: String,
    /// Headers the request must carry (exact match) for this path to apply.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, HeaderMatch>,
    #[serde(default)]
    pub splits: Vec<IngressBackendSplit>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub append_headers: BTreeMap<String, String>,
}

/// A header match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    pub exact: String,
}

/// A weighted backend: a revision's public Service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressBackendSplit {
    pub service_namespace: String,
    pub service_name: String,
    pub service_port: IntOrString,
    #[serde(default)]
    pub percent: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub append_headers: BTreeMap<String, String>,
}

/// `Ingress.status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct IngressStatus {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub observed_generation: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_load_balancer: Option<LoadBalancerStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_load_balancer: Option<LoadBalancerStatus>,
}

/// Where an ingress can be reached.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<LoadBalancerIngressStatus>,
}

/// One address of the ingress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerIngressStatus {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ip: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain_internal: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mesh_only: bool,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

crate::condition::impl_conditions!(IngressStatus);

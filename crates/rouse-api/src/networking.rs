//! `networking.internal.knative.dev/v1alpha1` ServerlessService: a revision's public endpoints
//! in Serve mode (its instances) or Proxy mode (the activator).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::autoscaling::ObjectReference;
use crate::condition::Condition;
use crate::kind::Kind;
use crate::meta::{KindOf, Object};

/// A ServerlessService: the switch between a revision's instances and the activator.
pub type ServerlessService = Object<ServerlessServiceSpec, ServerlessServiceStatus>;

impl KindOf for ServerlessService {
    const OBJECT_KIND: Kind = Kind::ServerlessService;
}

/// Where the revision's public endpoints point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum SksMode {
    /// Public endpoints are the revision's instances.
    #[default]
    Serve,
    /// Public endpoints are the activator.
    Proxy,
}

/// `ServerlessService.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerlessServiceSpec {
    #[serde(default)]
    pub mode: SksMode,
    #[serde(default)]
    pub object_ref: ObjectReference,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol_type: String,
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub num_activators: i32,
}

/// `ServerlessService.status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ServerlessServiceStatus {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub observed_generation: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub private_service_name: String,
    /// Rouse extension: the addresses currently behind the public service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}
fn is_zero32(v: &i32) -> bool {
    *v == 0
}

crate::condition::impl_conditions!(ServerlessServiceStatus);

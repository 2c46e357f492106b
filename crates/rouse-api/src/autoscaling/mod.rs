//! `autoscaling.internal.knative.dev/v1alpha1` PodAutoscaler (the KPA's per-revision object) and
//! the `autoscaling.knative.dev/*` annotations users put on revision templates.

pub mod annotations;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::condition::Condition;
use crate::kind::Kind;
use crate::meta::{KindOf, Object};

/// A PodAutoscaler: scales one revision.
pub type PodAutoscaler = Object<PodAutoscalerSpec, PodAutoscalerStatus>;

impl KindOf for PodAutoscaler {
    const OBJECT_KIND: Kind = Kind::PodAutoscaler;
}

/// `PodAutoscaler.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodAutoscalerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_concurrency: Option<i64>,
    #[serde(default)]
    pub scale_target_ref: ObjectReference,
    /// `Reachable`, `Unreachable` or empty (unknown).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reachability: String,
    /// `http1` or `h2c`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol_type: String,
}

/// A reference to another object by kind and name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectReference {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// `PodAutoscaler.status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PodAutoscalerStatus {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub observed_generation: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metrics_service_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_scale: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_scale: Option<i32>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

crate::condition::impl_conditions!(PodAutoscalerStatus);

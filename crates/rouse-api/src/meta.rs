//! Kubernetes-style object metadata and the generic object envelope every resource shares.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::kind::Kind;

/// `metadata` of every object, with the fields Knative users write and the store maintains.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub generate_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub creation_timestamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    /// Set with `deletionTimestamp` (0: no grace period for Knative's kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_grace_period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
    /// Accepted (kubectl output carries it) and ignored.
    #[serde(default, skip_serializing)]
    pub managed_fields: Option<serde_json::Value>,
    /// Accepted (older kubectl output carries it) and ignored.
    #[serde(default, skip_serializing)]
    pub self_link: Option<String>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// A reference from a child to the object that owns it; deleting the owner deletes the child.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OwnerReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_owner_deletion: Option<bool>,
}

impl ObjectMeta {
    /// The controller owner reference, if any.
    pub fn controller_owner(&self) -> Option<&OwnerReference> {
        self.owner_references
            .iter()
            .find(|o| o.controller == Some(true))
    }

    /// True when `uid` is among the owners.
    pub fn is_owned_by(&self, uid: &str) -> bool {
        self.owner_references.iter().any(|o| o.uid == uid)
    }
}

/// The envelope every resource shares: `apiVersion`, `kind`, `metadata`, `spec`, `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "schema",
    schemars(bound = "S: schemars::JsonSchema + Default + Serialize, \
                      T: schemars::JsonSchema + Default + Serialize")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Object<S, T> {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: S,
    #[serde(default)]
    pub status: T,
}

/// Ties a typed object to its [`Kind`].
pub trait Resource:
    Serialize + for<'de> Deserialize<'de> + Clone + Default + Send + Sync + 'static
{
    /// The kind this type is.
    const KIND: Kind;

    /// The object's metadata.
    fn meta(&self) -> &ObjectMeta;
    /// The object's metadata, mutably.
    fn meta_mut(&mut self) -> &mut ObjectMeta;

    /// A fresh object with `apiVersion`/`kind` filled in.
    fn new_named(namespace: &str, name: &str) -> Self {
        let mut o = Self::default();
        o.meta_mut().namespace = namespace.to_string();
        o.meta_mut().name = name.to_string();
        o.set_type_meta();
        o
    }

    /// Fills `apiVersion` and `kind`.
    fn set_type_meta(&mut self);

    /// An owner reference pointing at this object, as controller.
    fn owner_ref(&self) -> OwnerReference {
        OwnerReference {
            api_version: Self::KIND.api_version().to_string(),
            kind: Self::KIND.name().to_string(),
            name: self.meta().name.clone(),
            uid: self.meta().uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    /// The object as JSON.
    fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("resource serializes")
    }

    /// Decodes an object the store returned (lenient: stored objects were validated on entry).
    fn from_value(v: serde_json::Value) -> Result<Self, serde_json::Error> {
        serde_json::from_value(v)
    }
}

impl<S, T> Resource for Object<S, T>
where
    S: Serialize + for<'de> Deserialize<'de> + Clone + Default + Send + Sync + 'static,
    T: Serialize + for<'de> Deserialize<'de> + Clone + Default + Send + Sync + 'static,
    Object<S, T>: KindOf,
{
    const KIND: Kind = <Self as KindOf>::OBJECT_KIND;

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
    fn set_type_meta(&mut self) {
        self.api_version = Self::KIND.api_version().to_string();
        self.kind = Self::KIND.name().to_string();
    }
}

/// Maps an `Object<Spec, Status>` instantiation to its kind.
pub trait KindOf {
    /// The kind.
    const OBJECT_KIND: Kind;
}

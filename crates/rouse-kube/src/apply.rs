//! Writing the objects Rouse owns (a revision's Deployment, Services and EndpointSlices, a
//! Route's Ingress) by server-side apply: Rouse states the whole object under one field
//! manager and the API server merges, so no read-modify-write race exists and fields other
//! managers own (an HPA's replicas, a user's label) are left alone unless Rouse sets them too.

use k8s_openapi::NamespaceResourceScope;
use kube::Resource;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use rouse_api::ingress::Ingress;
use rouse_store::StoreError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

use crate::crd;
use crate::store::api_resource;

/// The field manager of every write Rouse's controller makes.
pub const FIELD_MANAGER: &str = "rouse-controller";

/// Server-side applies a namespaced Kubernetes object (Deployment, Service, EndpointSlice, ...)
/// and returns it as stored. Conflicts with other managers are forced: these objects are
/// Rouse's own.
pub async fn apply<K>(client: &kube::Client, obj: &K) -> Result<K, StoreError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let meta = obj.meta();
    let (Some(ns), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) else {
        return Err(StoreError::Invalid(format!(
            "{}: metadata.namespace and metadata.name are required",
            K::kind(&())
        )));
    };
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|e| StoreError::Backend(format!("apply {} {ns}/{name}: {e}", K::kind(&()))))
}

/// Server-side applies a Route's Knative Ingress; returns it as stored (as JSON: the server's
/// copy carries metadata Rouse's type does not model).
pub async fn apply_ingress(
    client: &kube::Client,
    ing: &Ingress,
) -> Result<serde_json::Value, StoreError> {
    let ns = &ing.metadata.namespace;
    let name = &ing.metadata.name;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &api_resource(&crd::INGRESS));
    let applied = api
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(ing),
        )
        .await
        .map_err(|e| StoreError::Backend(format!("apply Ingress {ns}/{name}: {e}")))?;
    serde_json::to_value(applied)
        .map_err(|e| StoreError::Backend(format!("encoding an Ingress: {e}")))
}

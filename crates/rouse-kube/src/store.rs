//! The store's operations over the Kubernetes API: Knative's objects as dynamic objects
//! addressed by their kind's group, version and plural, with the API's answers mapped onto
//! [`StoreError`] (404 → NotFound, 409 → AlreadyExists or Conflict, 400/422 → Invalid, 403 →
//! a message naming the missing permission), status written through the status subresource,
//! deletes cascading through Kubernetes' garbage collector, and updates retried from fresh
//! state when they lose a resourceVersion race.
//!
//! These are async: the local [`rouse_store::Store`] trait is synchronous and its watch is the
//! embedded store's own, so the reconcilers reach this through the seam once it is async (see
//! docs/kubernetes.md).

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, PostParams, Preconditions,
    WatchEvent as KubeEvent, WatchParams,
};
use kube::core::GroupVersionKind;
use rouse_api::Kind;
use rouse_store::{EventType, StoreError, WatchEvent};
use serde_json::Value;

use crate::crd::{self, CrdInfo};

/// How many times an update is retried from fresh state after losing a resourceVersion race.
pub const CONFLICT_RETRIES: usize = 5;

/// The CRD registration of a kind.
pub fn crd_info(kind: Kind) -> &'static CrdInfo {
    crd::info(kind)
}

/// The dynamic API resource of a CRD.
pub fn api_resource(info: &CrdInfo) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(info.group, info.version, info.kind),
        info.plural,
    )
}

/// Knative's objects in a cluster, through the Kubernetes API.
#[derive(Clone)]
pub struct KubeStore {
    client: kube::Client,
}

impl KubeStore {
    /// A store on this client.
    pub fn new(client: kube::Client) -> KubeStore {
        KubeStore { client }
    }

    fn api(&self, kind: Kind, namespace: Option<&str>) -> Api<DynamicObject> {
        let ar = api_resource(crd_info(kind));
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        }
    }

    /// The object, or [`StoreError::NotFound`].
    pub async fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Value, StoreError> {
        let obj = self
            .api(kind, Some(namespace))
            .get(name)
            .await
            .map_err(|e| map_error(e, kind, namespace, name, "get"))?;
        to_value(obj)
    }

    /// The objects of `kind` in `namespace` (`None` = all), sorted by namespace then name, and
    /// the list's resourceVersion.
    pub async fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> Result<(Vec<Value>, u64), StoreError> {
        let list = self
            .api(kind, namespace)
            .list(&ListParams::default())
            .await
            .map_err(|e| map_error(e, kind, namespace.unwrap_or(""), "", "list"))?;
        let rv = parse_rv(list.metadata.resource_version.as_deref().unwrap_or("0"))?;
        let mut items = list
            .items
            .into_iter()
            .map(to_value)
            .collect::<Result<Vec<_>, _>>()?;
        items.sort_by(|a, b| {
            let key = |v: &Value| {
                (
                    v["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    v["metadata"]["name"].as_str().unwrap_or("").to_string(),
                )
            };
            key(a).cmp(&key(b))
        });
        Ok((items, rv))
    }

    /// Creates an object (namespace `default` when unset); the API server names it from
    /// `generateName` and sets uid, generation and resourceVersion.
    pub async fn create(&self, kind: Kind, obj: Value) -> Result<Value, StoreError> {
        let mut obj = from_value(kind, obj)?;
        let ns = obj
            .metadata
            .namespace
            .get_or_insert_with(|| "default".to_string())
            .clone();
        let name = obj.metadata.name.clone().unwrap_or_default();
        // The server assigns these; a stale copy would be refused.
        obj.metadata.resource_version = None;
        obj.metadata.uid = None;
        let created = self
            .api(kind, Some(&ns))
            .create(&PostParams::default(), &obj)
            .await
            .map_err(|e| map_error(e, kind, &ns, &name, "create"))?;
        to_value(created)
    }

    /// Replaces metadata and spec; a stale `resourceVersion` is a [`StoreError::Conflict`].
    pub async fn update(&self, kind: Kind, obj: Value) -> Result<Value, StoreError> {
        self.replace(kind, obj, false).await
    }

    /// Replaces the status through the status subresource.
    pub async fn update_status(&self, kind: Kind, obj: Value) -> Result<Value, StoreError> {
        self.replace(kind, obj, true).await
    }

    async fn replace(&self, kind: Kind, obj: Value, status: bool) -> Result<Value, StoreError> {
        let obj = from_value(kind, obj)?;
        let ns = obj
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let Some(name) = obj.metadata.name.clone() else {
            return Err(StoreError::Invalid("metadata.name: Required value".into()));
        };
        let api = self.api(kind, Some(&ns));
        let pp = PostParams::default();
        let res = if status {
            api.replace_status(&name, &pp, &obj).await
        } else {
            api.replace(&name, &pp, &obj).await
        };
        let verb = if status { "update status of" } else { "update" };
        to_value(res.map_err(|e| map_error(e, kind, &ns, &name, verb))?)
    }

    /// Reads the object, applies `change` and writes it back — the spec (or, with `status`,
    /// the status) — starting again from the object as stored whenever the write loses a
    /// resourceVersion race, up to [`CONFLICT_RETRIES`] times. `change` returns false when
    /// there is nothing to write. An object deleted meanwhile is NotFound, never recreated.
    pub async fn update_with_retry(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        status: bool,
        mut change: impl FnMut(&mut Value) -> bool,
    ) -> Result<Value, StoreError> {
        let mut attempt = 0;
        loop {
            let mut obj = self.get(kind, namespace, name).await?;
            if !change(&mut obj) {
                return Ok(obj);
            }
            match self.replace(kind, obj, status).await {
                Err(StoreError::Conflict { .. }) if attempt < CONFLICT_RETRIES => attempt += 1,
                other => return other,
            }
        }
    }

    /// Deletes the object; Kubernetes' garbage collector deletes what it owns (background
    /// propagation). The uid precondition makes sure the object read is the one deleted.
    /// Returns the object as it was.
    pub async fn delete(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Value, StoreError> {
        let current = self.get(kind, namespace, name).await?;
        let uid = current["metadata"]["uid"].as_str().map(str::to_string);
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid,
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        self.api(kind, Some(namespace))
            .delete(name, &dp)
            .await
            .map_err(|e| map_error(e, kind, namespace, name, "delete"))?;
        Ok(current)
    }
}

impl KubeStore {
    /// The changes to objects of `kind` in `namespace` (`None` = all) after resourceVersion
    /// `from` (a list's), as the store's events. Bookmarks are skipped; the server ending the
    /// watch ends the stream (watch again from the last event's resourceVersion); a `from`
    /// the server no longer has is [`StoreError::Expired`] (list again).
    pub async fn watch(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        from: u64,
    ) -> Result<BoxStream<'static, Result<WatchEvent, StoreError>>, StoreError> {
        let wp = WatchParams::default();
        let stream = self
            .api(kind, namespace)
            .watch(&wp, &from.to_string())
            .await
            .map_err(|e| map_error(e, kind, namespace.unwrap_or(""), "", "watch"))?;
        Ok(stream
            .filter_map(move |ev| async move {
                let (event_type, obj) = match ev {
                    Ok(KubeEvent::Added(o)) => (EventType::Added, o),
                    Ok(KubeEvent::Modified(o)) => (EventType::Modified, o),
                    Ok(KubeEvent::Deleted(o)) => (EventType::Deleted, o),
                    Ok(KubeEvent::Bookmark(_)) => return None,
                    Ok(KubeEvent::Error(status)) if status.code == 410 => {
                        return Some(Err(StoreError::Expired {
                            requested: from,
                            oldest: oldest_in(&status.message),
                        }));
                    }
                    Ok(KubeEvent::Error(status)) => {
                        return Some(Err(StoreError::Backend(format!(
                            "watch: {} ({})",
                            status.message, status.code
                        ))));
                    }
                    Err(e) => return Some(Err(StoreError::Backend(format!("watch: {e}")))),
                };
                let rv = obj.metadata.resource_version.as_deref().unwrap_or("0");
                Some(parse_rv(rv).and_then(|resource_version| {
                    Ok(WatchEvent {
                        event_type,
                        kind,
                        object: to_value(obj)?,
                        resource_version,
                    })
                }))
            })
            .boxed())
    }
}

/// The current resourceVersion a 410 names: "too old resource version: 5 (1234)" -> 1234
/// (0 when the message does not say).
fn oldest_in(message: &str) -> u64 {
    message
        .rsplit_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or(0)
}

fn to_value(obj: DynamicObject) -> Result<Value, StoreError> {
    serde_json::to_value(obj).map_err(|e| StoreError::Backend(format!("encoding an object: {e}")))
}

fn from_value(kind: Kind, mut v: Value) -> Result<DynamicObject, StoreError> {
    if !v.is_object() {
        return Err(StoreError::Invalid(
            "an object must be a JSON object".into(),
        ));
    }
    let info = crd_info(kind);
    v["apiVersion"] = format!("{}/{}", info.group, info.version).into();
    v["kind"] = info.kind.into();
    serde_json::from_value(v).map_err(|e| StoreError::Invalid(format!("not an object: {e}")))
}

/// Kubernetes resourceVersions are opaque strings; every API server in use (etcd-backed)
/// hands out decimal integers, which the store's numeric versions rely on.
fn parse_rv(rv: &str) -> Result<u64, StoreError> {
    rv.parse()
        .map_err(|_| StoreError::Backend(format!("resourceVersion {rv:?} is not a number")))
}

/// Maps the API's answer onto the store's errors, keeping the server's message.
fn map_error(e: kube::Error, kind: Kind, namespace: &str, name: &str, verb: &str) -> StoreError {
    let info = crd_info(kind);
    let resource = format!("{}.{}", info.plural, info.group);
    let kube::Error::Api(status) = e else {
        return StoreError::Backend(format!("{verb} {resource}: {e}"));
    };
    let (namespace, name) = (namespace.to_string(), name.to_string());
    match (status.code, status.reason.as_str()) {
        (404, _)
            if status
                .message
                .contains("the server could not find the requested resource") =>
        {
            StoreError::Backend(format!(
                "the API server does not serve {resource}: is its CRD installed? (rouse install)"
            ))
        }
        (404, _) => StoreError::NotFound {
            kind,
            namespace,
            name,
        },
        (409, "AlreadyExists") => StoreError::AlreadyExists {
            kind,
            namespace,
            name,
        },
        (409, _) => StoreError::Conflict {
            kind,
            namespace,
            name,
            message: status.message,
        },
        (400 | 422, _) => StoreError::Invalid(status.message),
        (403, _) => StoreError::Backend(format!(
            "forbidden: cannot {verb} {resource} in namespace {namespace:?} (missing RBAC permission?): {}",
            status.message
        )),
        _ => StoreError::Backend(format!(
            "{verb} {resource}: {} ({})",
            status.message, status.code
        )),
    }
}

//! A Route's cluster-local Services (Knative's placeholder Services): per traffic name (the
//! default and each tag) a Service named after the cluster-local host's first label, of type
//! ExternalName pointing at the gateway's Service. Cluster DNS then answers
//! `{route}.{ns}.svc.cluster.local` (the Route's `status.address.url`) with the gateway, which
//! serves the Ingress's ClusterLocal rule for that host.
//!
//! A Service of the same name that the Route does not control is never touched: the Route is
//! told (`IngressReady=False`, `NotOwned`) as Knative does.

use crate::lock;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, ListParams, Preconditions};
use rouse_api::ingress::Ingress;
use rouse_api::meta::Resource;
use rouse_api::serving::{LABEL_SERVICE, Route};
use rouse_controller::Key;
use rouse_store::{Kind, StoreError};
use serde_json::json;
use tokio::sync::broadcast;

use crate::apply::apply;
use crate::install::{GATEWAY_LOCAL_SERVICE, NAMESPACE};
use crate::revision::{owner_reference, typed};
use crate::route::{CLUSTER_LOCAL_DOMAIN, LABEL_ROUTE};

/// The condition reason when a same-named Service is not the Route's (Knative's).
pub const REASON_NOT_OWNED: &str = "NotOwned";

/// Where the Services point: the gateway's cluster-local Service (the only one serving
/// cluster-local hosts), by its cluster DNS name.
pub fn gateway_host() -> String {
    format!("{GATEWAY_LOCAL_SERVICE}.{NAMESPACE}.{CLUSTER_LOCAL_DOMAIN}")
}

/// The Service names a Route's Ingress asks for: the first label of each ClusterLocal rule's
/// `{name}.{ns}.svc.cluster.local` host, in rule order.
pub fn names(ing: &Ingress) -> Vec<String> {
    let suffix = format!(".{}.{CLUSTER_LOCAL_DOMAIN}", ing.metadata.namespace);
    let mut out: Vec<String> = Vec::new();
    for rule in ing
        .spec
        .rules
        .iter()
        .filter(|r| r.visibility == "ClusterLocal")
    {
        for host in &rule.hosts {
            let Some(name) = host.strip_suffix(suffix.as_str()) else {
                continue;
            };
            if !name.is_empty() && !name.contains('.') && !out.iter().any(|n| n == name) {
                out.push(name.to_string());
            }
        }
    }
    out
}

/// The cluster-local Service `name` of a Route: ExternalName to the gateway, port 80 `http`,
/// labelled with the Route (and its Knative Service), controlled by the Route.
pub fn service(route: &Route, name: &str) -> Service {
    let mut labels = BTreeMap::from([(LABEL_ROUTE.to_string(), route.metadata.name.clone())]);
    if let Some(svc) = route.metadata.labels.get(LABEL_SERVICE) {
        labels.insert(LABEL_SERVICE.to_string(), svc.clone());
    }
    typed(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": route.metadata.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(&route.owner_ref())],
        },
        "spec": {
            "type": "ExternalName",
            "externalName": gateway_host(),
            "sessionAffinity": "None",
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 80}],
        },
    }))
}

/// True when `svc` is controlled by the object with UID `owner_uid`.
pub fn controlled_by(svc: &Service, owner_uid: &str) -> bool {
    !owner_uid.is_empty()
        && svc
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == owner_uid && o.controller == Some(true))
}

/// What writing one Service came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Applied; the stored Service's UID.
    Applied(String),
    /// A Service of that name exists and is not the Route's: left alone.
    NotOwned,
}

/// Applies `svc` unless a Service of its name exists that `route_uid` does not control.
pub async fn write(
    client: &kube::Client,
    route_uid: &str,
    svc: &Service,
) -> Result<Written, StoreError> {
    let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    let existing = api
        .get_opt(name)
        .await
        .map_err(|e| StoreError::Backend(format!("reading Service {ns}/{name}: {e}")))?;
    if existing.is_some_and(|s| !controlled_by(&s, route_uid)) {
        return Ok(Written::NotOwned);
    }
    let stored = apply(client, svc).await?;
    Ok(Written::Applied(stored.metadata.uid.unwrap_or_default()))
}

/// Deletes Service `ns/name` if it is still the one with `uid` (Rouse's); gone already is fine.
pub async fn delete(
    client: &kube::Client,
    ns: &str,
    name: &str,
    uid: &str,
) -> Result<(), StoreError> {
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    let dp = DeleteParams {
        preconditions: (!uid.is_empty()).then(|| Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => Ok(()),
        // 404: gone (the Route's cascade, say); 409: a different Service took the name.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(StoreError::Backend(format!(
            "deleting Service {ns}/{name}: {e}"
        ))),
    }
}

/// The cluster-local Services Rouse wrote before (a restart): every Service labelled with a
/// Route and controlled by one, as `(namespace, route, name, uid)`.
pub async fn existing(
    client: &kube::Client,
) -> Result<Vec<(String, String, String, String)>, StoreError> {
    let api: Api<Service> = Api::all(client.clone());
    let listed = api
        .list(&ListParams::default().labels(LABEL_ROUTE))
        .await
        .map_err(|e| StoreError::Backend(format!("listing Routes' Services: {e}")))?;
    let mut out = Vec::new();
    for svc in listed.items {
        let meta = &svc.metadata;
        let owner = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.kind == Kind::Route.name() && o.controller == Some(true));
        // Checked here too: only Services a Route controls, whatever the server's filtering.
        let (Some(owner), Some(ns), Some(name)) = (owner, &meta.namespace, &meta.name) else {
            continue;
        };
        if meta.labels.as_ref().and_then(|l| l.get(LABEL_ROUTE)) != Some(&owner.name) {
            continue;
        }
        out.push((
            ns.clone(),
            owner.name.clone(),
            name.clone(),
            meta.uid.clone().unwrap_or_default(),
        ));
    }
    Ok(out)
}

/// Each Route's wanted Services: the Route's UID and the Services.
pub type Wanted = HashMap<Key, (String, Vec<Service>)>;

/// The Services written, by Route: name to UID.
type WrittenSet = HashMap<Key, BTreeMap<String, String>>;

/// The cluster-local Services of every Route: what `set_routes` last asked for, what is
/// written, and which Routes find their name taken.
#[derive(Default)]
pub struct LocalServices {
    wanted: Mutex<Wanted>,
    /// `None` until read back from the API server (Services written before a restart are
    /// deleted when no longer wanted, too). Held across a whole sync: syncs run one at a time,
    /// each toward the latest wanted set.
    written: tokio::sync::Mutex<Option<WrittenSet>>,
    not_owned: Mutex<HashMap<Key, String>>,
    /// The names written, by Route, as the last sync left them (readable while one runs).
    done: Mutex<HashMap<Key, BTreeSet<String>>>,
}

impl LocalServices {
    /// The Services to have from now on (the next [`LocalServices::sync`] writes them).
    pub fn want(&self, wanted: Wanted) {
        *lock(&self.wanted) = wanted;
    }

    /// Runs [`LocalServices::sync`] every `every` while some Route's name is taken, so a
    /// Route turns from `NotOwned` once the other Service is gone, or some wanted Service is
    /// not written (a write failed); ends with the seam.
    pub async fn retry_not_owned(
        local: std::sync::Weak<LocalServices>,
        client: kube::Client,
        events: broadcast::Sender<Key>,
        every: std::time::Duration,
    ) {
        loop {
            tokio::time::sleep(every).await;
            let Some(local) = local.upgrade() else { return };
            let routes: Vec<Key> = lock(&local.wanted).keys().cloned().collect();
            let pending = routes.iter().any(|route| local.pending(route));
            if pending || !lock(&local.not_owned).is_empty() {
                local.sync(&client, &events).await;
            }
        }
    }

    /// True when some wanted Service is not among those `present(namespace, name)` says the
    /// API server has (deleted by someone, or not written yet).
    pub fn missing(&self, present: impl Fn(&str, &str) -> bool) -> bool {
        lock(&self.wanted).values().flat_map(|(_, s)| s).any(|svc| {
            let meta = &svc.metadata;
            !present(
                meta.namespace.as_deref().unwrap_or_default(),
                meta.name.as_deref().unwrap_or_default(),
            )
        })
    }

    /// True while some Service the Route asks for is not written yet: the Route is not
    /// served as Knative's is until its Services exist (Knative writes them before it reports
    /// the Route Ready).
    pub fn pending(&self, route: &Key) -> bool {
        let wanted = lock(&self.wanted);
        let Some((_, services)) = wanted.get(route) else {
            return false;
        };
        let done = lock(&self.done);
        let written = done.get(route);
        services.iter().any(|svc| {
            let name = svc.metadata.name.as_deref().unwrap_or_default();
            !written.is_some_and(|w| w.contains(name))
        })
    }

    /// The name of a Service the Route asks for that another owner holds.
    pub fn not_owned(&self, route: &Key) -> Option<String> {
        lock(&self.not_owned).get(route).cloned()
    }

    /// Writes the wanted Services, deletes the ones written before and no longer wanted, and
    /// sends each Route whose `NotOwned` verdict changed on `events`.
    pub async fn sync(&self, client: &kube::Client, events: &broadcast::Sender<Key>) {
        let mut guard = self.written.lock().await;
        if guard.is_none() {
            match existing(client).await {
                Ok(found) => {
                    let mut set = WrittenSet::new();
                    for (ns, route, name, uid) in found {
                        set.entry(Key::new(Kind::Route, &ns, &route))
                            .or_default()
                            .insert(name, uid);
                    }
                    *guard = Some(set);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the Routes' cluster-local Services failed");
                    return;
                }
            }
        }
        let written = guard.get_or_insert_with(WrittenSet::new);
        let wanted = lock(&self.wanted).clone();
        let mut not_owned = HashMap::new();
        for (route, (uid, services)) in &wanted {
            let names = written.entry(route.clone()).or_default();
            for svc in services {
                let name = svc.metadata.name.clone().unwrap_or_default();
                match write(client, uid, svc).await {
                    Ok(Written::Applied(svc_uid)) => {
                        names.insert(name, svc_uid);
                    }
                    Ok(Written::NotOwned) => {
                        names.remove(&name);
                        not_owned.entry(route.clone()).or_insert(name);
                    }
                    Err(e) => tracing::warn!(error = %e, "writing a Route's Service failed"),
                }
            }
        }
        for (route, names) in written.iter_mut() {
            let keep: Vec<&str> = wanted
                .get(route)
                .map(|(_, s)| {
                    s.iter()
                        .filter_map(|s| s.metadata.name.as_deref())
                        .collect()
                })
                .unwrap_or_default();
            let stale: Vec<(String, String)> = names
                .iter()
                .filter(|(n, _)| !keep.contains(&n.as_str()))
                .map(|(n, u)| (n.clone(), u.clone()))
                .collect();
            for (name, uid) in stale {
                match delete(client, &route.namespace, &name, &uid).await {
                    Ok(()) => {
                        names.remove(&name);
                    }
                    Err(e) => tracing::warn!(error = %e, "deleting a Route's Service failed"),
                }
            }
        }
        written.retain(|_, names| !names.is_empty());
        // A Route whose Services came or went is looked at again (it may be served now).
        let done: HashMap<Key, BTreeSet<String>> = written
            .iter()
            .map(|(route, names)| (route.clone(), names.keys().cloned().collect()))
            .collect();
        let done_before = std::mem::replace(&mut *lock(&self.done), done.clone());
        for route in done_before.keys().chain(done.keys()) {
            if done_before.get(route) != done.get(route) {
                let _ = events.send(route.clone());
            }
        }
        let before = std::mem::replace(&mut *lock(&self.not_owned), not_owned.clone());
        for route in before.keys().chain(not_owned.keys()) {
            if before.get(route) != not_owned.get(route) {
                if let Some(name) = not_owned.get(route) {
                    tracing::warn!(?route, service = %name, "a Route's Service name is taken by a Service it does not own");
                }
                let _ = events.send(route.clone());
            }
        }
    }
}

//! [`KubeNetworking`]: the [`Networking`] seam as Kubernetes objects. A revision's reachability
//! becomes its ServerlessService's Services (`{rev}-private` with a selector on the pods,
//! `{rev}` without one) and the public Service's EndpointSlices: the ready pods in Serve mode,
//! a subset of the activator's pods in Proxy mode. The routing table becomes one Knative
//! Ingress per Route and one per served DomainMapping, served by the gateway of class
//! `rouse.ingress.networking.knative.dev`, and each Route's cluster-local Services
//! ([`crate::local_service`]).
//! Writes are server-side applies run on the seam's runtime; the seam's calls return at once.
//! A Route's or DomainMapping's Ingress is served once the gateway marks it Ready for the spec
//! last written: the seam follows the Ingresses and tells the reconcilers when one's readiness
//! changes. It also follows the Routes' cluster-local Services: a label the user set or changed
//! wakes the Route (per-tag visibility), and one deleted is written again.

use crate::lock;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, ListParams};
use rouse_api::condition::Conditions;
use rouse_api::config::domain::CLUSTER_LOCAL;
use rouse_api::domainmapping::{DomainMapping, claim_holder};
use rouse_api::ingress::{Ingress, IngressSpec};
use rouse_api::meta::Resource;
use rouse_api::networking::{ServerlessService, SksMode};
use rouse_api::serving::{LABEL_VISIBILITY, Revision, Route};
use rouse_controller::Key;
use rouse_controller::networking::{
    ActivatorLoad, HostRoute, IngressState, Networking, RevisionTraffic,
};
use rouse_store::{Kind, Store, StoreError};
use serde_json::Value;
use tokio::runtime::Handle;
use tokio::sync::broadcast;

use crate::apply::{apply, apply_ingress};
use crate::domainmapping;
use crate::informer::{Informer, Snapshot};
use crate::install::NAMESPACE;
use crate::local_service::{self, LocalServices, REASON_NOT_OWNED};
use crate::revision::{
    Backend, LABEL_SLICE_MANAGED_BY, LABEL_SLICE_SERVICE, SLICE_MANAGER, private_service,
    public_endpoint_slices, public_endpoints, public_service,
};
use crate::route::{IngressConfig, LABEL_ROUTE, ResolvedTarget, ingress};
use crate::stat_stream::ActivatorStats;

/// The activator's Service, whose EndpointSlices list the activators.
pub const ACTIVATOR_SERVICE: &str = "activator-service";

type RevisionKey = (String, String);

/// How often the cluster-local Services are tried again while a Route's name is taken.
const NOT_OWNED_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// Services, EndpointSlices and Ingresses through the Kubernetes API.
pub struct KubeNetworking {
    client: kube::Client,
    handle: Handle,
    store: Arc<dyn Store>,
    /// Replaced when config-network, config-domain or config-features change.
    ingress: Mutex<IngressConfig>,
    /// The mode each revision's public endpoints were last written in.
    modes: Arc<Mutex<HashMap<RevisionKey, SksMode>>>,
    /// What the activators pushed over their stat streams.
    activator_stats: Arc<ActivatorStats>,
    /// Each Route's and DomainMapping's Ingress as last handed to the API server: its name
    /// and spec, by owner.
    written: Mutex<HashMap<Key, (String, IngressSpec)>>,
    /// The Ingresses as the API server has them.
    ingresses: Informer,
    /// The owners of Ingresses that changed in generation or status.
    owner_events: broadcast::Sender<Key>,
    /// The Routes' cluster-local Services.
    local: Arc<LocalServices>,
    /// The Services labelled with a Route, as the API server has them.
    services: Informer,
}

impl KubeNetworking {
    /// The seam over `client`, writing on `handle`, reading Knative's objects from `store`.
    pub fn new(
        client: kube::Client,
        handle: Handle,
        store: Arc<dyn Store>,
        ingress: IngressConfig,
    ) -> KubeNetworking {
        let ingresses = {
            let _on = handle.enter();
            let ar = crate::store::api_resource(&crate::crd::INGRESS);
            Informer::start(Api::all_with(client.clone(), &ar), "", "ingresses")
        };
        let owner_events = broadcast::channel(256).0;
        handle.spawn(announce_changes(
            ingresses.subscribe(),
            owner_events.clone(),
        ));
        let local = Arc::new(LocalServices::default());
        let services = {
            let _on = handle.enter();
            let ar = ApiResource::erase::<Service>(&());
            Informer::start(Api::all_with(client.clone(), &ar), LABEL_ROUTE, "services")
        };
        handle.spawn(follow_services(
            services.subscribe(),
            Arc::downgrade(&local),
            client.clone(),
            owner_events.clone(),
        ));
        handle.spawn(LocalServices::retry_not_owned(
            Arc::downgrade(&local),
            client.clone(),
            owner_events.clone(),
            NOT_OWNED_RETRY,
        ));
        KubeNetworking {
            client,
            handle,
            store,
            ingress: Mutex::new(ingress),
            modes: Arc::default(),
            activator_stats: Arc::default(),
            written: Mutex::default(),
            ingresses,
            owner_events,
            local,
            services,
        }
    }

    /// Returns once the Routes' Services have been listed: until then no Service's
    /// visibility label is known, and a tag the user made cluster-local would be published.
    pub async fn wait_synced(&self) {
        let mut sets = self.services.subscribe();
        let _ = sets.wait_for(|s| s.synced).await;
    }

    /// The settings Ingresses are built with from now on.
    pub fn set_ingress_config(&self, ingress: IngressConfig) {
        *lock(&self.ingress) = ingress;
    }

    /// Reports the loads the activators push to `stats` (the stat stream's collector).
    pub fn with_activator_stats(mut self, stats: Arc<ActivatorStats>) -> KubeNetworking {
        self.activator_stats = stats;
        self
    }

    fn modes(&self) -> MutexGuard<'_, HashMap<RevisionKey, SksMode>> {
        lock(&self.modes)
    }

    fn read<T: Resource>(&self, namespace: &str, name: &str) -> Result<T, StoreError> {
        let v = self.store.get(T::KIND, namespace, name)?;
        T::from_value(v)
            .map_err(|e| StoreError::Backend(format!("{} does not decode: {e}", T::KIND)))
    }
}

/// What an owner's readiness is read from: its Ingress's generation and status.
fn readiness_of(ingress: &Value) -> (Value, Value) {
    (
        ingress["metadata"]["generation"].clone(),
        ingress["status"].clone(),
    )
}

/// The Route or DomainMapping an Ingress (stored, as JSON) belongs to, by its owner reference.
fn owner_of(ingress: &Value) -> Option<Key> {
    let ns = ingress["metadata"]["namespace"].as_str()?;
    ingress["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find_map(|o| {
            let kind = Kind::from_name(o["kind"].as_str()?)
                .filter(|k| matches!(k, Kind::Route | Kind::DomainMapping))?;
            Some(Key::new(kind, ns, o["name"].as_str()?))
        })
}

/// Sends the owner of each Ingress whose generation or status changed (or that came or went)
/// from one set to the next, until the informer is gone.
async fn announce_changes(
    mut sets: tokio::sync::watch::Receiver<Snapshot>,
    events: broadcast::Sender<Key>,
) {
    let mut seen: HashMap<Key, (Value, Value)> = HashMap::new();
    while sets.changed().await.is_ok() {
        let set = sets.borrow_and_update().clone();
        let mut now = HashMap::with_capacity(set.objects.len());
        for ing in set.objects.values() {
            if let Some(owner) = owner_of(ing) {
                now.insert(owner, readiness_of(ing));
            }
        }
        for (key, state) in &now {
            if seen.get(key) != Some(state) {
                let _ = events.send(key.clone());
            }
        }
        for key in seen.keys().filter(|k| !now.contains_key(*k)) {
            let _ = events.send(key.clone());
        }
        seen = now;
    }
}

/// What the Route reconcilers read off a Route's cluster-local Services: by Service name, its
/// visibility label and UID (a Service deleted and made again is another).
type RouteServices = BTreeMap<String, (Option<String>, String)>;

/// The Services of a set by the Route their `serving.knative.dev/route` label names.
fn services_by_route(set: &Snapshot) -> HashMap<Key, RouteServices> {
    let mut out: HashMap<Key, RouteServices> = HashMap::new();
    for ((ns, name), svc) in set.objects.iter() {
        let labels = &svc["metadata"]["labels"];
        let Some(route) = labels[LABEL_ROUTE].as_str() else {
            continue;
        };
        let visibility = labels[LABEL_VISIBILITY].as_str().map(str::to_string);
        let uid = svc["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        out.entry(Key::new(Kind::Route, ns, route))
            .or_default()
            .insert(name.clone(), (visibility, uid));
    }
    out
}

/// Follows the Routes' Services until the informer is gone: wakes each Route whose Services
/// came, went or changed their visibility label (the reconciler reads them again), and writes
/// the wanted Services again when one of them is missing (deleted by someone).
async fn follow_services(
    mut sets: tokio::sync::watch::Receiver<Snapshot>,
    local: std::sync::Weak<LocalServices>,
    client: kube::Client,
    events: broadcast::Sender<Key>,
) {
    let mut seen: HashMap<Key, RouteServices> = HashMap::new();
    while sets.changed().await.is_ok() {
        let set = sets.borrow_and_update().clone();
        if !set.synced {
            continue;
        }
        let now = services_by_route(&set);
        for key in now.keys().chain(seen.keys()) {
            if now.get(key) != seen.get(key) {
                let _ = events.send(key.clone());
            }
        }
        seen = now;
        let Some(local) = local.upgrade() else { return };
        if local.missing(|ns, name| {
            set.objects
                .contains_key(&(ns.to_string(), name.to_string()))
        }) {
            local.sync(&client, &events).await;
        }
    }
}

/// An Ingress as the API server has it, against the spec last written: ready once the
/// ingress implementation marked this very spec Ready (Knative's `IsReady`: the status
/// observed the current generation).
pub fn ingress_state(stored: Option<&Value>, written: Option<&IngressSpec>) -> IngressState {
    let (Some(stored), Some(written)) = (stored, written) else {
        return IngressState::not_configured();
    };
    let Ok(ing) = serde_json::from_value::<Ingress>(stored.clone()) else {
        return IngressState::not_configured();
    };
    if ing.spec != *written || ing.status.observed_generation != ing.metadata.generation {
        return IngressState::not_configured();
    }
    match ing.status.get_condition("Ready") {
        Some(c) if c.status == rouse_api::condition::ConditionStatus::True => IngressState::Ready,
        Some(c) => IngressState::NotReady {
            status: c.status,
            reason: c.reason.clone(),
            message: c.message.clone(),
        },
        None => IngressState::not_configured(),
    }
}

/// The activators' addresses, from the endpoints of `activator-service`.
pub async fn activators(client: &kube::Client) -> Result<Vec<Backend>, kube::Error> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let lp =
        ListParams::default().labels(&format!("kubernetes.io/service-name={ACTIVATOR_SERVICE}"));
    let mut out = Vec::new();
    for slice in api.list(&lp).await?.items {
        for ep in slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            for a in &ep.addresses {
                if let Ok(ip) = a.parse::<IpAddr>() {
                    out.push(Backend {
                        ip,
                        ready,
                        pod: ep.target_ref.as_ref().and_then(|r| r.name.clone()),
                        node: ep.node_name.clone(),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Writes a revision's Services and public EndpointSlices, and deletes the public slices
/// the new set no longer names (fewer endpoints, an address family gone); returns the
/// effective mode.
pub async fn write_revision(
    client: &kube::Client,
    sks: &ServerlessService,
    revision_uid: &str,
    pods: &[Backend],
    activators: &[Backend],
) -> Result<SksMode, StoreError> {
    apply(client, &private_service(sks, revision_uid)).await?;
    apply(client, &public_service(sks)).await?;
    let eps = public_endpoints(sks, pods, activators);
    let slices = public_endpoint_slices(sks, &eps);
    let mut names = HashSet::new();
    for slice in &slices {
        apply(client, slice).await?;
        names.extend(slice.metadata.name.clone());
    }
    delete_stale_slices(client, sks, &names).await?;
    Ok(eps.mode)
}

/// Deletes the public Service's slices Rouse wrote that are not in `keep`.
async fn delete_stale_slices(
    client: &kube::Client,
    sks: &ServerlessService,
    keep: &HashSet<String>,
) -> Result<(), StoreError> {
    let (ns, name) = (&sks.metadata.namespace, &sks.metadata.name);
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let selector = format!("{LABEL_SLICE_SERVICE}={name},{LABEL_SLICE_MANAGED_BY}={SLICE_MANAGER}");
    let listed = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| StoreError::Backend(format!("listing {ns}/{name}'s EndpointSlices: {e}")))?;
    for slice in listed.items {
        let labels = slice.metadata.labels.clone().unwrap_or_default();
        // Checked here too: only ever one of ours, whatever the server's filtering.
        let ours = labels.get(LABEL_SLICE_SERVICE) == Some(name)
            && labels.get(LABEL_SLICE_MANAGED_BY).map(String::as_str) == Some(SLICE_MANAGER);
        let Some(stale) = slice.metadata.name.filter(|n| ours && !keep.contains(n)) else {
            continue;
        };
        match api.delete(&stale, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(StoreError::Backend(format!(
                    "deleting EndpointSlice {ns}/{stale}: {e}"
                )));
            }
        }
    }
    Ok(())
}

/// The Ingress targets of a Route, from its status' traffic (what the Route reconciler
/// resolved), 0 % targets without a tag dropped; `h2c` is the caller's to set.
pub fn resolved_targets(route: &Route) -> Vec<ResolvedTarget> {
    route
        .status
        .traffic
        .iter()
        .filter(|t| !t.revision_name.is_empty())
        .map(|t| ResolvedTarget {
            tag: t.tag.clone(),
            revision: t.revision_name.clone(),
            percent: t.percent.unwrap_or(0),
            h2c: false,
        })
        .collect()
}

/// A Route's targets from the routing table, and its traffic names served cluster-local
/// only. Each traffic name (the default, `""`, and the tags its spec or status names) is
/// looked up at its external host, as the Route reconciler renders it (`domain-template`,
/// `tag-template`, the Route's domain), else at its cluster-local host
/// `{name}.{ns}.svc.{cluster-domain}`, which alone in the table means the name is cluster-local
/// only; `h2c` is the caller's to set.
pub fn targets_from_table(
    route: &Route,
    table: &[HostRoute],
    cfg: &IngressConfig,
) -> (Vec<ResolvedTarget>, BTreeSet<String>) {
    let (name, ns) = (&route.metadata.name, &route.metadata.namespace);
    let domain = cfg.route_domain(route);
    let mut names: Vec<&str> = vec![""];
    let tags = route.spec.traffic.iter().map(|t| t.tag.as_str());
    for tag in tags.chain(route.status.traffic.iter().map(|t| t.tag.as_str())) {
        if !tag.is_empty() && !names.contains(&tag) {
            names.push(tag);
        }
    }
    let by_host: HashMap<&str, &HostRoute> = table.iter().map(|h| (h.host.as_str(), h)).collect();
    let mut out = Vec::new();
    let mut local_only = BTreeSet::new();
    for tag in names {
        let external = if tag.is_empty() {
            cfg.network.route_host(name, ns, &domain)
        } else {
            cfg.network.tag_host(tag, name, ns, &domain)
        };
        let local = cfg
            .network
            .cluster_local_host(&cfg.network.traffic_name(tag, name), ns);
        let entry = match by_host.get(external.as_str()) {
            Some(hr) => hr,
            None => match by_host.get(local.as_str()) {
                Some(hr) => {
                    local_only.insert(tag.to_string());
                    hr
                }
                None => continue,
            },
        };
        for (target_ns, revision, percent) in &entry.targets {
            if target_ns == ns {
                out.push(ResolvedTarget {
                    tag: tag.to_string(),
                    revision: revision.clone(),
                    percent: i64::from(*percent),
                    h2c: false,
                });
            }
        }
    }
    (out, local_only)
}

/// The traffic names a Route's status says are cluster-local only: those whose URL is their
/// cluster-local host (`status.url` for the default, `status.traffic[].url` for tags).
fn local_only_from_status(route: &Route, cfg: &IngressConfig) -> BTreeSet<String> {
    let (name, ns) = (&route.metadata.name, &route.metadata.namespace);
    let is_local = |tag: &str, url: &str| {
        let host = cfg
            .network
            .cluster_local_host(&cfg.network.traffic_name(tag, name), ns);
        url == format!("http://{host}")
    };
    let mut out = BTreeSet::new();
    if is_local("", &route.status.url) {
        out.insert(String::new());
    }
    for t in route.status.traffic.iter().filter(|t| !t.tag.is_empty()) {
        if is_local(&t.tag, &t.url) {
            out.insert(t.tag.clone());
        }
    }
    out
}

impl KubeNetworking {
    /// True when the revision's app speaks h2c: its split goes to the public Service's port
    /// 81, which the gateway reaches over HTTP/2.
    fn serves_h2c(&self, namespace: &str, revision: &str) -> bool {
        self.read::<Revision>(namespace, revision)
            .is_ok_and(|r| r.spec.is_h2c())
    }

    /// The Ingresses of the DomainMappings the table serves: a mapped domain is in it only
    /// once its mapping holds the claim and resolved its target.
    fn mapping_ingresses(&self, table: &[HostRoute]) -> Vec<Ingress> {
        let mapped: HashSet<&str> = table
            .iter()
            .filter(|hr| hr.rewrite_host.is_some())
            .map(|hr| hr.host.as_str())
            .collect();
        if mapped.is_empty() {
            return Vec::new();
        }
        let mappings: Vec<DomainMapping> = match self.store.list(Kind::DomainMapping, None) {
            Ok((items, _)) => items
                .into_iter()
                .filter_map(|v| DomainMapping::from_value(v).ok())
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "listing domain mappings for their Ingresses failed");
                return Vec::new();
            }
        };
        mappings
            .iter()
            .filter(|dm| mapped.contains(dm.metadata.name.to_ascii_lowercase().as_str()))
            .filter(|dm| {
                claim_holder(&mappings, &dm.metadata.name)
                    .is_some_and(|h| h.metadata.namespace == dm.metadata.namespace)
            })
            .map(|dm| domainmapping::ingress(dm, &lock(&self.ingress)))
            .collect()
    }
}

impl Networking for KubeNetworking {
    /// The table itself is the gateway's to build (from the Ingresses): each Route gets its
    /// Ingress written with the targets the table gives its hosts (the Route's status may
    /// not say them yet: the table is programmed before the Route is marked Ready).
    fn set_routes(&self, table: Vec<HostRoute>) {
        let routes = match self.store.list(Kind::Route, None) {
            Ok((routes, _)) => routes,
            Err(e) => {
                tracing::warn!(error = %e, "listing routes for their Ingresses failed");
                return;
            }
        };
        let cfg = lock(&self.ingress).clone();
        let mut ingresses: Vec<_> = routes
            .into_iter()
            .filter_map(|v| Route::from_value(v).ok())
            .filter_map(|r| {
                let (targets, local_only) = targets_from_table(&r, &table, &cfg);
                let (mut targets, local_only) = if targets.is_empty() {
                    (resolved_targets(&r), local_only_from_status(&r, &cfg))
                } else {
                    (targets, local_only)
                };
                for t in &mut targets {
                    t.h2c = self.serves_h2c(&r.metadata.namespace, &t.revision);
                }
                (!targets.is_empty()).then(|| ingress(&r, &targets, &local_only, &cfg))
            })
            .collect();
        // Each Route's Services follow its Ingress: one per cluster-local host it serves.
        self.local.want(
            ingresses
                .iter()
                .filter_map(|ing| {
                    let route: Route = self
                        .read(&ing.metadata.namespace, &ing.metadata.name)
                        .ok()?;
                    let services = local_service::names(ing)
                        .iter()
                        .map(|n| local_service::service(&route, n))
                        .collect();
                    let key =
                        Key::new(Kind::Route, &route.metadata.namespace, &route.metadata.name);
                    Some((key, (route.metadata.uid.clone(), services)))
                })
                .collect(),
        );
        ingresses.extend(self.mapping_ingresses(&table));
        *lock(&self.written) = ingresses
            .iter()
            .filter_map(|i| {
                let owner = i.metadata.owner_references.first()?;
                let kind = Kind::from_name(&owner.kind)?;
                let key = Key::new(kind, &i.metadata.namespace, &owner.name);
                Some((key, (i.metadata.name.clone(), i.spec.clone())))
            })
            .collect();
        let (client, local, events) = (
            self.client.clone(),
            self.local.clone(),
            self.owner_events.clone(),
        );
        self.handle.spawn(async move {
            for ing in ingresses {
                if let Err(e) = apply_ingress(&client, &ing).await {
                    tracing::warn!(error = %e, "writing an Ingress failed");
                }
            }
            local.sync(&client, &events).await;
        });
    }

    /// Ready once the gateway marked the Ingress Ready for the spec last written and the
    /// Route's cluster-local Services are written; never while a Route's Service name is held
    /// by a Service it does not own.
    fn ingress_state(&self, owner: &Key) -> IngressState {
        if let Some(name) = self.local.not_owned(owner) {
            return IngressState::NotReady {
                status: rouse_api::condition::ConditionStatus::False,
                reason: REASON_NOT_OWNED.into(),
                message: format!(
                    "There is an existing Service {name:?} that the Route does not own."
                ),
            };
        }
        let Some((name, spec)) = lock(&self.written).get(owner).cloned() else {
            return IngressState::not_configured();
        };
        if self.local.pending(owner) {
            return IngressState::not_configured();
        }
        let set = self.ingresses.snapshot();
        let stored = set.objects.get(&(owner.namespace.clone(), name));
        ingress_state(stored, Some(&spec))
    }

    fn subscribe_ingresses(&self) -> Option<broadcast::Receiver<Key>> {
        Some(self.owner_events.subscribe())
    }

    /// Read off the Services informer: those labelled with the Route and cluster-local.
    fn cluster_local_services(&self, namespace: &str, route: &str) -> BTreeSet<String> {
        let set = self.services.snapshot();
        let from = (namespace.to_string(), String::new());
        set.objects
            .range(from..)
            .take_while(|((ns, _), _)| ns == namespace)
            .filter(|(_, svc)| {
                let labels = &svc["metadata"]["labels"];
                labels[LABEL_ROUTE].as_str() == Some(route)
                    && labels[LABEL_VISIBILITY].as_str() == Some(CLUSTER_LOCAL)
            })
            .map(|((_, name), _)| name.clone())
            .collect()
    }

    fn set_revision(&self, namespace: &str, revision: &str, t: RevisionTraffic) {
        let sks: ServerlessService = match self.read(namespace, revision) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%revision, error = %e, "no ServerlessService yet");
                return;
            }
        };
        let uid = match self.read::<Revision>(namespace, revision) {
            Ok(r) => r.metadata.uid,
            Err(_) => return,
        };
        let pods: Vec<Backend> = t
            .ready
            .iter()
            .map(|a| Backend {
                ip: a.ip(),
                ready: true,
                pod: None,
                node: None,
            })
            .collect();
        let (client, modes) = (self.client.clone(), self.modes.clone());
        let key = (namespace.to_string(), revision.to_string());
        let wanted = t.mode;
        self.handle.spawn(async move {
            let acts = match wanted {
                SksMode::Proxy => activators(&client).await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "reading the activators failed");
                    Vec::new()
                }),
                SksMode::Serve => Vec::new(),
            };
            match write_revision(&client, &sks, &uid, &pods, &acts).await {
                Ok(mode) => {
                    lock(&modes).insert(key, mode);
                }
                Err(e) => tracing::warn!(error = %e, "writing a revision's endpoints failed"),
            }
        });
    }

    /// The Services and EndpointSlices are owned by the ServerlessService: Kubernetes' garbage
    /// collector removes them with it.
    fn remove_revision(&self, namespace: &str, revision: &str) {
        self.modes()
            .remove(&(namespace.to_string(), revision.to_string()));
    }

    fn serving_through_activator(&self, namespace: &str, revision: &str) -> bool {
        self.modes()
            .get(&(namespace.to_string(), revision.to_string()))
            == Some(&SksMode::Proxy)
    }

    /// What the activators pushed since the last call ([`crate::stat_stream`]).
    fn take_activator_stats(&self) -> Vec<ActivatorLoad> {
        self.activator_stats.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rouse_api::condition::ConditionStatus;
    use rouse_api::config::network::NetworkConfig;
    use serde_json::json;

    #[test]
    fn a_routes_targets_are_found_by_its_own_hosts_whatever_the_templates_and_domain() {
        let cfg = IngressConfig {
            network: NetworkConfig::from_data(&rouse_api::config::data(&[
                ("domain-template", "{{.Name}}-{{.Namespace}}.{{.Domain}}"),
                ("tag-template", "{{.Name}}--{{.Tag}}"),
            ]))
            .unwrap(),
            domain: "example.com".into(),
            domains: rouse_api::config::domain::DomainConfig::from_data(&rouse_api::config::data(
                &[("prod.example.org", "selector: {app: prod}")],
            ))
            .unwrap(),
            tag_header_routing: false,
        };
        let mut route = Route::new_named("shop", "cart");
        route.metadata.labels.insert("app".into(), "prod".into());
        route.spec.traffic = vec![rouse_api::serving::TrafficTarget {
            tag: "blue".into(),
            revision_name: "cart-00002".into(),
            ..Default::default()
        }];
        let entry = |host: &str, revision: &str| HostRoute {
            host: host.into(),
            targets: vec![("shop".into(), revision.into(), 100)],
            unavailable: None,
            tags: Vec::new(),
            rewrite_host: None,
        };
        let table = [
            entry("cart-shop.prod.example.org", "cart-00001"),
            entry("cart--blue-shop.prod.example.org", "cart-00002"),
            // Another route's, and this route's host under the fallback domain: not its own.
            entry("other-shop.prod.example.org", "other-00001"),
            entry("cart-shop.example.com", "cart-00009"),
        ];
        let found: Vec<(String, String)> = targets_from_table(&route, &table, &cfg)
            .0
            .into_iter()
            .map(|t| (t.tag, t.revision))
            .collect();
        assert_eq!(
            found,
            [
                (String::new(), "cart-00001".to_string()),
                ("blue".to_string(), "cart-00002".to_string())
            ]
        );
        assert!(targets_from_table(&route, &table, &cfg).1.is_empty());
        // The tag at its cluster-local host alone (its Service labelled cluster-local): found
        // there, and served cluster-local only.
        let table = [
            entry("cart-shop.prod.example.org", "cart-00001"),
            entry("cart--blue.shop.svc.cluster.local", "cart-00002"),
        ];
        let (found, local_only) = targets_from_table(&route, &table, &cfg);
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].revision, "cart-00002");
        assert_eq!(local_only, BTreeSet::from(["blue".to_string()]));
    }

    fn stored(generation: i64, observed: i64, ready: Value) -> Value {
        json!({"metadata": {"name": "cart", "namespace": "shop", "generation": generation},
               "spec": {"httpOption": "Enabled"},
               "status": {"observedGeneration": observed, "conditions": ready}})
    }

    #[test]
    fn an_ingress_is_ready_for_the_spec_written_and_its_generation() {
        let written = IngressSpec {
            http_option: "Enabled".into(),
            ..Default::default()
        };
        let ready = json!([{"type": "Ready", "status": "True"}]);
        assert_eq!(
            ingress_state(Some(&stored(2, 2, ready.clone())), Some(&written)),
            IngressState::Ready
        );
        // Marked for an older generation, for another spec, not written, not stored.
        let stale = stored(3, 2, ready.clone());
        assert_eq!(
            ingress_state(Some(&stale), Some(&written)),
            IngressState::not_configured()
        );
        let other = IngressSpec {
            http_option: "Redirected".into(),
            ..Default::default()
        };
        let fresh = stored(2, 2, ready);
        assert_eq!(
            ingress_state(Some(&fresh), Some(&other)),
            IngressState::not_configured()
        );
        assert_eq!(
            ingress_state(Some(&fresh), None),
            IngressState::not_configured()
        );
        assert_eq!(
            ingress_state(None, Some(&written)),
            IngressState::not_configured()
        );
        // The implementation's own verdict, with its reason.
        let failed = json!([{"type": "Ready", "status": "False", "reason": "Conflict",
                             "message": "host taken"}]);
        assert_eq!(
            ingress_state(Some(&stored(1, 1, failed)), Some(&written)),
            IngressState::NotReady {
                status: ConditionStatus::False,
                reason: "Conflict".into(),
                message: "host taken".into(),
            }
        );
    }
}

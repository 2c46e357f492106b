//! [`KubeNetworking`]: the [`Networking`] seam as Kubernetes objects. A revision's reachability
//! becomes its ServerlessService's Services (`{rev}-private` with a selector on the pods,
//! `{rev}` without one) and the public Service's EndpointSlices: the ready pods in Serve mode,
//! a subset of the activator's pods in Proxy mode. The routing table becomes one Knative
//! Ingress per Route and one per served DomainMapping, served by the gateway of class
//! `rouse.ingress.networking.knative.dev`.
//! Writes are server-side applies run on the seam's runtime; the seam's calls return at once.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use rouse_api::domainmapping::{DomainMapping, claim_holder};
use rouse_api::ingress::Ingress;
use rouse_api::meta::Resource;
use rouse_api::networking::{ServerlessService, SksMode};
use rouse_api::serving::{Revision, Route};
use rouse_controller::networking::{ActivatorLoad, HostRoute, Networking, RevisionTraffic};
use rouse_store::{Kind, Store, StoreError};
use tokio::runtime::Handle;

use crate::apply::{apply, apply_ingress};
use crate::domainmapping;
use crate::install::NAMESPACE;
use crate::revision::{
    Backend, private_service, public_endpoint_slices, public_endpoints, public_service,
};
use crate::route::{IngressConfig, ResolvedTarget, ingress};
use crate::stat_stream::ActivatorStats;

/// The activator's Service, whose EndpointSlices list the activators.
pub const ACTIVATOR_SERVICE: &str = "activator-service";

type RevisionKey = (String, String);

/// Services, EndpointSlices and Ingresses through the Kubernetes API.
pub struct KubeNetworking {
    client: kube::Client,
    handle: Handle,
    store: Arc<dyn Store>,
    /// Replaced when config-network or config-features change.
    ingress: Mutex<IngressConfig>,
    /// The mode each revision's public endpoints were last written in.
    modes: Arc<Mutex<HashMap<RevisionKey, SksMode>>>,
    /// What the activators pushed over their stat streams.
    activator_stats: Arc<ActivatorStats>,
}

impl KubeNetworking {
    /// The seam over `client`, writing on `handle`, reading Knative's objects from `store`.
    pub fn new(
        client: kube::Client,
        handle: Handle,
        store: Arc<dyn Store>,
        ingress: IngressConfig,
    ) -> KubeNetworking {
        KubeNetworking {
            client,
            handle,
            store,
            ingress: Mutex::new(ingress),
            modes: Arc::default(),
            activator_stats: Arc::default(),
        }
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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

/// Writes a revision's Services and public EndpointSlices; returns the effective mode.
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
    for slice in public_endpoint_slices(sks, &eps) {
        apply(client, &slice).await?;
    }
    Ok(eps.mode)
}

/// The Ingress targets of a Route, from its status' traffic (what the Route reconciler
/// resolved), 0 % targets without a tag dropped.
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

/// A Route's targets from the routing table: its default host `{name}.{ns}.{domain}` and its
/// tag hosts `{tag}-{name}.{ns}.{domain}` (Knative's default domain and tag templates).
pub fn targets_from_table(route: &Route, table: &[HostRoute], domain: &str) -> Vec<ResolvedTarget> {
    let suffix = format!(
        "{}.{}.{domain}",
        route.metadata.name, route.metadata.namespace
    );
    let mut out = Vec::new();
    for hr in table {
        let tag = if hr.host == suffix {
            String::new()
        } else if let Some(tag) = hr
            .host
            .strip_suffix(suffix.as_str())
            .and_then(|p| p.strip_suffix('-'))
            .filter(|t| !t.is_empty() && !t.contains('.'))
        {
            tag.to_string()
        } else {
            continue;
        };
        for (ns, revision, percent) in &hr.targets {
            if *ns == route.metadata.namespace {
                out.push(ResolvedTarget {
                    tag: tag.clone(),
                    revision: revision.clone(),
                    percent: i64::from(*percent),
                    h2c: false,
                });
            }
        }
    }
    out
}

impl KubeNetworking {
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
        let domain = &cfg.domain;
        let mut ingresses: Vec<_> = routes
            .into_iter()
            .filter_map(|v| Route::from_value(v).ok())
            .filter_map(|r| {
                let targets = targets_from_table(&r, &table, domain);
                let mut targets = if targets.is_empty() {
                    resolved_targets(&r)
                } else {
                    targets
                };
                // An h2c revision's split goes to its public Service's h2c port (81), so the
                // gateway reaches its pods on 8013 over HTTP/2.
                for t in &mut targets {
                    t.h2c = self
                        .read::<Revision>(&r.metadata.namespace, &t.revision)
                        .is_ok_and(|rev| rev.spec.is_h2c());
                }
                (!targets.is_empty()).then(|| ingress(&r, &targets, &cfg))
            })
            .collect();
        ingresses.extend(self.mapping_ingresses(&table));
        let client = self.client.clone();
        self.handle.spawn(async move {
            for ing in ingresses {
                if let Err(e) = apply_ingress(&client, &ing).await {
                    tracing::warn!(error = %e, "writing an Ingress failed");
                }
            }
        });
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

//! Route → resolved traffic (`status.traffic` always names revisions), URLs for the route and
//! its tags, and the route's entries in the gateway's routing table. The table is kept per
//! route in memory and reprogrammed only when a route's entries change; the empty key rebuilds
//! it from every stored route.

use std::collections::{BTreeMap, BTreeSet};

use rouse_api::Kind;
use rouse_api::condition::{ConditionStatus, Conditions};
use rouse_api::config::features::{Flag, TAG_HEADER_BASED_ROUTING};
use rouse_api::domainmapping::DomainMapping;
use rouse_api::serving::{Addressable, Configuration, Revision, Route, RouteStatus, TrafficTarget};

use super::route_hosts::RouteHosts;
use super::{Requeue, route_rollout, routing_state};
use crate::networking::{HostRoute, IngressState, Targets};
use crate::{Context, Key, ReconcileError};

pub(super) async fn reconcile(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Requeue, ReconcileError> {
    // The empty key only asks for a rebuild of the routing table.
    if name.is_empty() {
        rebuild_gateway(ctx).await?;
        return Ok(None);
    }
    let Some(route) = ctx.client.get::<Route>(ns, name)? else {
        // Gone: what it served, as last programmed, may now be in reserve.
        let before: BTreeSet<String> = ctx
            .routing
            .lock()
            .await
            .get(&(Kind::Route, ns.to_string(), name.to_string()))
            .into_iter()
            .flatten()
            .flat_map(|h| h.targets.iter().chain(h.tags.iter().flat_map(|t| &t.1)))
            .map(|(_, rev, _)| rev.clone())
            .collect();
        program_route(ctx, ns, name, Vec::new()).await;
        routing_state::relabel(ctx, ns, name, &before, &BTreeSet::new())?;
        return Ok(None);
    };
    let mut status = resolve_status(ctx, &route)?;
    let rolling = route_rollout::step(ctx, &route, &mut status, route_rollout::now_nanos());
    refuse_deleted_revisions(ctx, ns, &status)?;
    let entries = host_routes(ctx, &route, &status)?;
    // The data plane is programmed before the status is written, and IngressReady says
    // whether it serves that yet (the networking seam wakes the route when that changes), so
    // a client that waits for Ready never finds the host unrouted.
    program_route(ctx, ns, name, entries).await;
    let next_step = match ctx
        .networking
        .ingress_state(&Key::new(Kind::Route, ns, name))
    {
        IngressState::Ready => {
            if !rolling.as_ref().is_some_and(|r| r.in_progress()) {
                status.mark_true("IngressReady");
            }
            // A rollout's steps are planned once its current shares are served.
            rolling.and_then(|r| r.served(&mut status, route_rollout::now_nanos()))
        }
        IngressState::NotReady {
            status: s,
            reason,
            message,
        } => {
            status.set_condition("IngressReady", s, &reason, &message);
            None
        }
    };
    status.derive_ready(&READY_DEPENDENTS);
    let before = serving(&route.status);
    let status = write(ctx, &route, status)?;
    routing_state::relabel(ctx, ns, name, &before, &serving(&status))?;
    Ok(next_step)
}

/// The revisions a route's resolved traffic names (with or without a share).
fn serving(status: &RouteStatus) -> BTreeSet<String> {
    status
        .traffic
        .iter()
        .map(|t| t.revision_name.clone())
        .filter(|r| !r.is_empty())
        .collect()
}

/// Replaces the entries of one route (`Kind::Route`) or mapping (`Kind::DomainMapping`) in the
/// gateway's table (none: it is gone) and reprograms the gateway when they changed.
pub(super) async fn program(
    ctx: &Context,
    kind: Kind,
    ns: &str,
    name: &str,
    entries: Vec<HostRoute>,
) {
    let mut table = ctx.routing.lock().await;
    let key = (kind, ns.to_string(), name.to_string());
    let changed = if entries.is_empty() {
        table.remove(&key).is_some()
    } else if table.get(&key) != Some(&entries) {
        table.insert(key, entries);
        true
    } else {
        false
    };
    if changed {
        ctx.networking
            .set_routes(table.values().flatten().cloned().collect());
    }
}

/// The conditions a Route's Ready is derived from.
const READY_DEPENDENTS: [&str; 3] = [
    "AllTrafficAssigned",
    "IngressReady",
    "CertificateProvisioned",
];

/// Why a target could not be resolved: the condition status, reason and message.
type Unresolved = (ConditionStatus, &'static str, String);

/// Resolves the route into the status it should have (the caller sets IngressReady from the
/// data plane, derives Ready once a rollout has had its say, and writes it).
fn resolve_status(ctx: &Context, route: &Route) -> Result<RouteStatus, ReconcileError> {
    let mut status = route.status.clone();
    status.observed_generation = route.metadata.generation;
    let hosts = RouteHosts::new(ctx, route);
    // The URL is external unless the Route is cluster-local; the address, what in-cluster
    // callers use, is always the cluster-local host (Knative's).
    status.url = hosts.url("");
    status.address = Some(Addressable {
        url: format!("http://{}", hosts.cluster_local("")),
    });

    match resolve(ctx, route, &hosts)? {
        Ok(traffic) => {
            status.traffic = traffic;
            status.mark_true("AllTrafficAssigned");
        }
        Err((s, reason, message)) => {
            // Keep serving the last resolved traffic while the new one is not ready.
            status.set_condition("AllTrafficAssigned", s, reason, &message);
        }
    }
    status.set_condition(
        "CertificateProvisioned",
        ConditionStatus::True,
        "TLSNotEnabled",
        "autoTLS is not enabled",
    );
    Ok(status)
}

fn write(ctx: &Context, route: &Route, status: RouteStatus) -> Result<RouteStatus, ReconcileError> {
    if status != route.status {
        let mut updated = route.clone();
        updated.status = status;
        return Ok(ctx.client.update_status(&updated)?.status);
    }
    Ok(status)
}

/// Resolves every target to a ready revision, or says why one cannot be.
fn resolve(
    ctx: &Context,
    route: &Route,
    hosts: &RouteHosts,
) -> Result<Result<Vec<TrafficTarget>, Unresolved>, ReconcileError> {
    let ns = &route.metadata.namespace;
    let mut out = Vec::new();
    for t in &route.spec.traffic {
        let revision = if !t.revision_name.is_empty() {
            match ctx.client.get::<Revision>(ns, &t.revision_name)? {
                None => {
                    return Ok(Err((
                        ConditionStatus::False,
                        "RevisionMissing",
                        format!(
                            "Revision {:?} referenced in traffic not found.",
                            t.revision_name
                        ),
                    )));
                }
                Some(r) => match r.status.get_condition("Ready").map(|c| c.status) {
                    Some(ConditionStatus::True) => t.revision_name.clone(),
                    Some(ConditionStatus::False) => {
                        return Ok(Err((
                            ConditionStatus::False,
                            "RevisionMissing",
                            format!("Revision {:?} failed to become ready.", t.revision_name),
                        )));
                    }
                    _ => {
                        return Ok(Err((
                            ConditionStatus::Unknown,
                            "RevisionMissing",
                            format!("Revision {:?} is not yet ready.", t.revision_name),
                        )));
                    }
                },
            }
        } else {
            match ctx.client.get::<Configuration>(ns, &t.configuration_name)? {
                None => {
                    return Ok(Err((
                        ConditionStatus::False,
                        "ConfigurationMissing",
                        format!(
                            "Configuration {:?} referenced in traffic not found.",
                            t.configuration_name
                        ),
                    )));
                }
                Some(c) if c.status.latest_ready_revision_name.is_empty() => {
                    let failed = c
                        .status
                        .get_condition("Ready")
                        .is_some_and(|r| r.status == ConditionStatus::False);
                    return Ok(Err((
                        if failed {
                            ConditionStatus::False
                        } else {
                            ConditionStatus::Unknown
                        },
                        "RevisionMissing",
                        if failed {
                            format!(
                                "Configuration {:?} does not have any ready Revision.",
                                t.configuration_name
                            )
                        } else {
                            format!(
                                "Configuration {:?} is waiting for a Revision to become ready.",
                                t.configuration_name
                            )
                        },
                    )));
                }
                Some(c) => c.status.latest_ready_revision_name.clone(),
            }
        };
        let url = if t.tag.is_empty() {
            String::new()
        } else {
            hosts.url(&t.tag)
        };
        out.push(TrafficTarget {
            tag: t.tag.clone(),
            revision_name: revision,
            configuration_name: t.configuration_name.clone(),
            latest_revision: Some(t.revision_name.is_empty()),
            percent: Some(t.percent.unwrap_or(0)),
            url,
        });
    }
    Ok(Ok(out))
}

/// When traffic could not be resolved, the last resolved traffic keeps serving (as Knative
/// keeps the last ingress when a route fails to reconcile). Any revision it names that no
/// longer exists is marked removed in the data plane, so its share and its tag are answered
/// 503 at once instead of waiting for an activation that cannot come (also after a restart,
/// when no delete event will be seen).
fn refuse_deleted_revisions(
    ctx: &Context,
    ns: &str,
    status: &RouteStatus,
) -> Result<(), ReconcileError> {
    if status.is_true("AllTrafficAssigned") {
        return Ok(());
    }
    for t in &status.traffic {
        if ctx.client.get::<Revision>(ns, &t.revision_name)?.is_none() {
            ctx.networking.remove_revision(ns, &t.revision_name);
        }
    }
    Ok(())
}

/// A route's entries in the gateway's table: its hosts split by revision, and each tag's
/// hosts; every traffic name at its cluster-local host and, unless cluster-local, its external
/// one ([`RouteHosts`]). A route with no traffic yet gets its hosts marked unavailable, with why.
fn host_routes(
    ctx: &Context,
    route: &Route,
    status: &RouteStatus,
) -> Result<Vec<HostRoute>, ReconcileError> {
    let (ns, name) = (
        route.metadata.namespace.as_str(),
        route.metadata.name.as_str(),
    );
    let hosts = RouteHosts::new(ctx, route);
    let entries = |tag: &str, targets: &Targets, tags: &[(String, Targets)]| {
        hosts
            .all(tag)
            .into_iter()
            .map(|host| HostRoute {
                host,
                targets: targets.clone(),
                unavailable: None,
                tags: tags.to_vec(),
                rewrite_host: None,
            })
            .collect::<Vec<_>>()
    };
    if status.traffic.is_empty() {
        let why = not_ready_text(ctx, ns, name, status)?;
        let mut out = entries("", &Vec::new(), &[]);
        for e in &mut out {
            e.unavailable = Some(why.clone());
        }
        return Ok(out);
    }
    let mut shares: BTreeMap<String, u32> = BTreeMap::new();
    for t in &status.traffic {
        let p = t.percent.unwrap_or(0).clamp(0, 100) as u32;
        if p > 0 {
            *shares.entry(t.revision_name.clone()).or_default() += p;
        }
    }
    let config = ctx.config.get();
    // Each tag's targets: one revision, or several while a rollout moves the tag's traffic.
    let mut tag_names: Vec<&str> = Vec::new();
    for t in status.traffic.iter().filter(|t| !t.tag.is_empty()) {
        if !tag_names.contains(&t.tag.as_str()) {
            tag_names.push(&t.tag);
        }
    }
    let tagged: Vec<(String, Targets)> = tag_names
        .into_iter()
        .map(|tag| {
            let entries: Vec<&TrafficTarget> =
                status.traffic.iter().filter(|t| t.tag == tag).collect();
            let targets = tag_shares(&entries)
                .into_iter()
                .map(|(rev, p)| (ns.to_string(), rev, p))
                .collect();
            (tag.to_string(), targets)
        })
        .collect();
    // With tag-header-based routing, the route's own hosts also send a request naming a tag
    // in `Knative-Serving-Tag` to that tag's revision (whatever its percent).
    let tags = if config.features.get(TAG_HEADER_BASED_ROUTING) == Flag::Enabled {
        tagged.clone()
    } else {
        Vec::new()
    };
    let default: Targets = shares
        .into_iter()
        .map(|(rev, p)| (ns.to_string(), rev, p))
        .collect();
    let mut out = entries("", &default, &tags);
    for (tag, targets) in &tagged {
        out.extend(entries(tag, targets, &[]));
    }
    Ok(out)
}

/// A tag host's split: all to its one revision, or, while the tag's target is rolling out
/// over several, their shares scaled to 100 (the remainder to the newest).
fn tag_shares(entries: &[&TrafficTarget]) -> Vec<(String, u32)> {
    let total: i64 = entries.iter().map(|t| t.percent.unwrap_or(0).max(0)).sum();
    if entries.len() < 2 || total == 0 {
        return entries
            .first()
            .map(|t| vec![(t.revision_name.clone(), 100)])
            .unwrap_or_default();
    }
    let mut out: Vec<(String, u32)> = entries
        .iter()
        .map(|t| {
            let share = t.percent.unwrap_or(0).max(0) * 100 / total;
            (t.revision_name.clone(), share as u32)
        })
        .collect();
    let given: u32 = out.iter().map(|(_, p)| p).sum();
    if let Some(newest) = out.last_mut() {
        newest.1 += 100 - given;
    }
    out.retain(|(_, p)| *p > 0);
    out
}

/// Why a route serves nothing yet, for the 503 its host answers: the route's own condition,
/// then what its configurations' newest revisions report (the cause a person needs, e.g.
/// `Container failed with: ...`).
fn not_ready_text(
    ctx: &Context,
    ns: &str,
    name: &str,
    status: &RouteStatus,
) -> Result<String, ReconcileError> {
    let mut text = format!("route {name:?} in namespace {ns:?} exists but is not ready");
    if let Some(c) = status.get_condition("AllTrafficAssigned")
        && c.status != ConditionStatus::True
    {
        text.push_str(&format!(": {}: {}", c.reason, c.message));
    }
    let Some(route) = ctx.client.get::<Route>(ns, name)? else {
        return Ok(text);
    };
    let mut seen = Vec::new();
    for t in &route.spec.traffic {
        let revision = if t.revision_name.is_empty() {
            match ctx.client.get::<Configuration>(ns, &t.configuration_name)? {
                Some(c) => c.status.latest_created_revision_name,
                None => continue,
            }
        } else {
            t.revision_name.clone()
        };
        if revision.is_empty() || seen.contains(&revision) {
            continue;
        }
        if let Some(rev) = ctx.client.get::<Revision>(ns, &revision)? {
            for c in &rev.status.conditions {
                if c.status != ConditionStatus::True && !c.message.is_empty() {
                    text.push_str(&format!(
                        "\nrevision {revision:?} {}={:?} {}: {}",
                        c.type_, c.status, c.reason, c.message
                    ));
                }
            }
        }
        seen.push(revision);
    }
    Ok(text)
}

/// Replaces one route's entries (none: the route is gone) and reprograms the gateway when they
/// changed.
async fn program_route(ctx: &Context, ns: &str, name: &str, entries: Vec<HostRoute>) {
    program(ctx, Kind::Route, ns, name, entries).await;
}

/// Rebuilds the gateway's whole routing table from every stored route's resolved traffic;
/// mappings keep their entries unless they are gone (each is reconciled after a relist).
async fn rebuild_gateway(ctx: &Context) -> Result<(), ReconcileError> {
    let mut table = ctx.routing.lock().await;
    let routes = ctx.client.list::<Route>(None)?;
    let mappings: BTreeSet<(String, String)> = ctx
        .client
        .list::<DomainMapping>(None)?
        .into_iter()
        .map(|m| (m.metadata.namespace, m.metadata.name))
        .collect();
    table.retain(|(kind, ns, name), _| {
        *kind == Kind::DomainMapping && mappings.contains(&(ns.clone(), name.clone()))
    });
    for r in &routes {
        let (ns, name) = (&r.metadata.namespace, &r.metadata.name);
        let entries = host_routes(ctx, r, &r.status)?;
        if !entries.is_empty() {
            table.insert((Kind::Route, ns.clone(), name.clone()), entries);
        }
    }
    ctx.networking
        .set_routes(table.values().flatten().cloned().collect());
    // A config change (config-domain, config-network) can move every route's URL and every
    // mapping's target host: each is looked at again to say so in its status.
    for r in &routes {
        let (ns, name) = (&r.metadata.namespace, &r.metadata.name);
        ctx.queue.add(Key::new(Kind::Route, ns, name));
    }
    for (ns, name) in &mappings {
        ctx.queue.add(Key::new(Kind::DomainMapping, ns, name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};

    use rouse_api::meta::Resource;
    use rouse_api::serving::LABEL_VISIBILITY;
    use rouse_runtime::ProcessRuntime;
    use rouse_store::EmbeddedStore;
    use serde_json::json;

    use super::*;
    use crate::Controller;
    use crate::networking::{ActivatorLoad, Networking, RevisionTraffic};

    /// A data plane that serves at once and whose cluster-local Services carry the labels the
    /// test sets; it keeps the last table programmed.
    #[derive(Default)]
    struct Recorded {
        table: Mutex<Vec<HostRoute>>,
        labelled: Mutex<BTreeSet<String>>,
    }

    impl Networking for Recorded {
        fn set_routes(&self, routes: Vec<HostRoute>) {
            *self.table.lock().unwrap() = routes;
        }
        fn ingress_state(&self, _: &Key) -> IngressState {
            IngressState::Ready
        }
        fn subscribe_ingresses(&self) -> Option<tokio::sync::broadcast::Receiver<Key>> {
            None
        }
        fn cluster_local_services(&self, namespace: &str, route: &str) -> BTreeSet<String> {
            assert_eq!((namespace, route), ("ns", "cart"));
            self.labelled.lock().unwrap().clone()
        }
        fn set_revision(&self, _: &str, _: &str, _: RevisionTraffic) {}
        fn remove_revision(&self, _: &str, _: &str) {}
        fn serving_through_activator(&self, _: &str, _: &str) -> bool {
            false
        }
        fn take_activator_stats(&self) -> Vec<ActivatorLoad> {
            Vec::new()
        }
    }

    /// `(url, address, canary's url, the table's hosts)` after a reconcile of route `cart`.
    async fn reconciled(
        ctx: &Context,
        net: &Recorded,
    ) -> (String, String, String, BTreeSet<String>) {
        reconcile(ctx, "ns", "cart").await.unwrap();
        let r = ctx.client.get::<Route>("ns", "cart").unwrap().unwrap();
        assert!(r.status.is_true("Ready"), "{:?}", r.status);
        let canary = r.status.traffic.iter().find(|t| t.tag == "canary").unwrap();
        let hosts = net
            .table
            .lock()
            .unwrap()
            .iter()
            .map(|h| h.host.clone())
            .collect();
        (
            r.status.url.clone(),
            r.status.address.clone().unwrap().url,
            canary.url.clone(),
            hosts,
        )
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn a_traffic_names_visibility_follows_its_services_label() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let net = Arc::new(Recorded::default());
        let ctx = Controller::new(
            store,
            ProcessRuntime::new(dir.path().to_path_buf()),
            net.clone(),
            rouse_api::config::SharedConfig::default(),
            "localhost".into(),
        )
        .context();
        let rev = ctx
            .client
            .create(&Revision::new_named("ns", "cart-00001"))
            .unwrap();
        let mut ready = rev.clone();
        ready.status.mark_true("Ready");
        ctx.client.update_status(&ready).unwrap();
        let route = Route::from_value(json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Route",
            "metadata": {"namespace": "ns", "name": "cart"},
            "spec": {"traffic": [{"revisionName": "cart-00001", "percent": 100},
                                 {"revisionName": "cart-00001", "tag": "canary"}]}}))
        .unwrap();
        ctx.client.create(&route).unwrap();

        // Nothing labelled: every name external, and served at its cluster-local host too.
        let (url, address, canary, hosts) = reconciled(&ctx, &net).await;
        assert_eq!(url, "http://cart.ns.localhost");
        assert_eq!(address, "http://cart.ns.svc.cluster.local");
        assert_eq!(canary, "http://canary-cart.ns.localhost");
        assert_eq!(
            hosts,
            set(&[
                "cart.ns.localhost",
                "cart.ns.svc.cluster.local",
                "canary-cart.ns.localhost",
                "canary-cart.ns.svc.cluster.local"
            ])
        );

        // The tag's Service labelled cluster-local: the tag loses its external host.
        *net.labelled.lock().unwrap() = set(&["canary-cart"]);
        let (url, _, canary, hosts) = reconciled(&ctx, &net).await;
        assert_eq!(url, "http://cart.ns.localhost");
        assert_eq!(canary, "http://canary-cart.ns.svc.cluster.local");
        assert!(!hosts.contains("canary-cart.ns.localhost"), "{hosts:?}");
        assert!(hosts.contains("canary-cart.ns.svc.cluster.local"));

        // The default's Service too: the Route's URL is its cluster-local one.
        *net.labelled.lock().unwrap() = set(&["cart", "canary-cart"]);
        let (url, address, _, hosts) = reconciled(&ctx, &net).await;
        assert_eq!(url, "http://cart.ns.svc.cluster.local");
        assert_eq!(address, url);
        assert_eq!(
            hosts,
            set(&[
                "cart.ns.svc.cluster.local",
                "canary-cart.ns.svc.cluster.local"
            ])
        );

        // Labels gone, the Route itself labelled: every name cluster-local (the lower wins).
        *net.labelled.lock().unwrap() = BTreeSet::new();
        let mut labelled = ctx.client.get::<Route>("ns", "cart").unwrap().unwrap();
        labelled
            .metadata
            .labels
            .insert(LABEL_VISIBILITY.into(), "cluster-local".into());
        ctx.client.update(&labelled).unwrap();
        let (url, _, canary, hosts) = reconciled(&ctx, &net).await;
        assert_eq!(url, "http://cart.ns.svc.cluster.local");
        assert_eq!(canary, "http://canary-cart.ns.svc.cluster.local");
        assert_eq!(
            hosts,
            set(&[
                "cart.ns.svc.cluster.local",
                "canary-cart.ns.svc.cluster.local"
            ])
        );
    }
}

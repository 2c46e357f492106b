//! Route → resolved traffic (`status.traffic` always names revisions), URLs for the route and
//! its tags, and the gateway's routing table rebuilt from every route at once.

use std::collections::BTreeMap;

use rouse_api::condition::{ConditionStatus, Conditions};
use rouse_api::serving::{Addressable, Configuration, Revision, Route, RouteStatus, TrafficTarget};

use super::Requeue;
use crate::networking::HostRoute;
use crate::{Context, ReconcileError};

pub(super) async fn reconcile(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Requeue, ReconcileError> {
    // The empty key only asks for a rebuild of the routing table.
    if !name.is_empty()
        && let Some(route) = ctx.client.get::<Route>(ns, name)?
    {
        reconcile_route(ctx, &route)?;
    }
    program_gateway(ctx).await?;
    Ok(None)
}

/// Why a target could not be resolved: the condition status, reason and message.
type Unresolved = (ConditionStatus, &'static str, String);

fn reconcile_route(ctx: &Context, route: &Route) -> Result<(), ReconcileError> {
    let ns = &route.metadata.namespace;
    let name = &route.metadata.name;
    let mut status = route.status.clone();
    status.observed_generation = route.metadata.generation;
    let host = ctx.config.network.route_host(name, ns, &ctx.domain);
    status.url = format!("http://{host}");
    status.address = Some(Addressable {
        url: status.url.clone(),
    });

    match resolve(ctx, route)? {
        Ok(traffic) => {
            status.traffic = traffic;
            status.mark_true("AllTrafficAssigned");
        }
        Err((s, reason, message)) => {
            // Keep serving the last resolved traffic while the new one is not ready.
            status.set_condition("AllTrafficAssigned", s, reason, &message);
        }
    }
    status.mark_true("IngressReady");
    status.set_condition(
        "CertificateProvisioned",
        ConditionStatus::True,
        "TLSNotEnabled",
        "autoTLS is not enabled",
    );
    status.derive_ready(&[
        "AllTrafficAssigned",
        "IngressReady",
        "CertificateProvisioned",
    ]);
    write(ctx, route, status)
}

fn write(ctx: &Context, route: &Route, status: RouteStatus) -> Result<(), ReconcileError> {
    if status != route.status {
        let mut updated = route.clone();
        updated.status = status;
        ctx.client.update_status(&updated)?;
    }
    Ok(())
}

/// Resolves every target to a ready revision, or says why one cannot be.
fn resolve(
    ctx: &Context,
    route: &Route,
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
            format!(
                "http://{}",
                ctx.config
                    .network
                    .tag_host(&t.tag, &route.metadata.name, ns, &ctx.domain)
            )
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

/// Rebuilds the gateway's whole routing table from every route's resolved traffic.
async fn program_gateway(ctx: &Context) -> Result<(), ReconcileError> {
    let _guard = ctx.routing_lock.lock().await;
    let routes = ctx.client.list::<Route>(None)?;
    let mut table: Vec<HostRoute> = Vec::new();
    for r in &routes {
        if r.status.traffic.is_empty() {
            continue;
        }
        let (ns, name) = (&r.metadata.namespace, &r.metadata.name);
        let mut shares: BTreeMap<String, u32> = BTreeMap::new();
        for t in &r.status.traffic {
            let p = t.percent.unwrap_or(0).clamp(0, 100) as u32;
            if p > 0 {
                *shares.entry(t.revision_name.clone()).or_default() += p;
            }
        }
        table.push(HostRoute {
            host: ctx.config.network.route_host(name, ns, &ctx.domain),
            targets: shares
                .into_iter()
                .map(|(rev, p)| (ns.clone(), rev, p))
                .collect(),
        });
        for t in r.status.traffic.iter().filter(|t| !t.tag.is_empty()) {
            table.push(HostRoute {
                host: ctx.config.network.tag_host(&t.tag, name, ns, &ctx.domain),
                targets: vec![(ns.clone(), t.revision_name.clone(), 100)],
            });
        }
    }
    ctx.networking.set_routes(table);
    Ok(())
}

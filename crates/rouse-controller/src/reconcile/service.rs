//! Service → a Configuration and a Route of the same name, and the Service's status from theirs.

use rouse_api::condition::{ConditionStatus, Conditions};
use rouse_api::meta::Resource;
use rouse_api::serving::{Configuration, LABEL_SERVICE, Route, Service, TrafficTarget};

use super::{Child, Requeue, ensure_child, propagated};
use crate::{Context, ReconcileError};

pub(super) fn reconcile(ctx: &Context, ns: &str, name: &str) -> Result<Requeue, ReconcileError> {
    let Some(svc) = ctx.client.get::<Service>(ns, name)? else {
        return Ok(None);
    };
    let mut status = svc.status.clone();
    status.observed_generation = svc.metadata.generation;

    let config = ensure_configuration(ctx, &svc)?;
    let route = ensure_route(ctx, &svc)?;

    match &config {
        Child::NotOwned => status.mark_false(
            "ConfigurationsReady",
            "NotOwned",
            &format!("There is an existing Configuration {name:?} that we do not own."),
        ),
        Child::Owned(c) => {
            status.latest_created_revision_name = c.status.latest_created_revision_name.clone();
            status.latest_ready_revision_name = c.status.latest_ready_revision_name.clone();
            if c.status.observed_generation != c.metadata.generation {
                status.mark_unknown(
                    "ConfigurationsReady",
                    "OutOfDate",
                    &format!("The Configuration {name:?} has not yet been reconciled."),
                );
            } else {
                copy_ready(
                    &mut status,
                    "ConfigurationsReady",
                    c.status.get_condition("Ready"),
                );
            }
        }
    }
    match &route {
        Child::NotOwned => status.mark_false(
            "RoutesReady",
            "NotOwned",
            &format!("There is an existing Route {name:?} that we do not own."),
        ),
        Child::Owned(r) => {
            status.url = r.status.url.clone();
            status.address = r.status.address.clone();
            status.traffic = r.status.traffic.clone();
            if r.status.observed_generation != r.metadata.generation {
                status.mark_unknown(
                    "RoutesReady",
                    "OutOfDate",
                    &format!("The Route {name:?} has not yet been reconciled."),
                );
            } else if let (Child::Owned(c), true) = (&config, r.status.is_true("Ready")) {
                if traffic_not_migrated(&r.spec.traffic, &r.status.traffic, c) {
                    status.mark_unknown(
                        "RoutesReady",
                        "TrafficNotMigrated",
                        "Traffic is not yet migrated to the latest revision.",
                    );
                } else {
                    status.mark_true("RoutesReady");
                }
            } else {
                copy_ready(&mut status, "RoutesReady", r.status.get_condition("Ready"));
            }
        }
    }
    status.derive_ready(&["ConfigurationsReady", "RoutesReady"]);
    if status != svc.status {
        let mut updated = svc.clone();
        updated.status = status;
        ctx.client.update_status(&updated)?;
    }
    Ok(None)
}

fn ensure_configuration(
    ctx: &Context,
    svc: &Service,
) -> Result<Child<Configuration>, ReconcileError> {
    let (ns, name) = (&svc.metadata.namespace, &svc.metadata.name);
    let mut want = Configuration::new_named(ns, name);
    want.metadata.labels = propagated(&svc.metadata.labels);
    want.metadata
        .labels
        .insert(LABEL_SERVICE.to_string(), name.clone());
    want.metadata.annotations = propagated(&svc.metadata.annotations);
    want.metadata.owner_references = vec![svc.owner_ref()];
    want.spec.template = svc.spec.template.clone();
    ensure_child(ctx, &svc.metadata.uid, want)
}

fn ensure_route(ctx: &Context, svc: &Service) -> Result<Child<Route>, ReconcileError> {
    let (ns, name) = (&svc.metadata.namespace, &svc.metadata.name);
    let mut want = Route::new_named(ns, name);
    want.metadata.labels = propagated(&svc.metadata.labels);
    want.metadata
        .labels
        .insert(LABEL_SERVICE.to_string(), name.clone());
    want.metadata.annotations = propagated(&svc.metadata.annotations);
    want.metadata.owner_references = vec![svc.owner_ref()];
    let traffic = if svc.spec.traffic.is_empty() {
        vec![TrafficTarget {
            percent: Some(100),
            latest_revision: Some(true),
            ..Default::default()
        }]
    } else {
        svc.spec.traffic.clone()
    };
    // A Service's targets without a revision follow its own Configuration.
    want.spec.traffic = traffic
        .into_iter()
        .map(|mut t| {
            if t.revision_name.is_empty() {
                t.configuration_name = name.clone();
            }
            t
        })
        .collect();
    ensure_child(ctx, &svc.metadata.uid, want)
}

fn copy_ready(
    status: &mut impl Conditions,
    type_: &str,
    ready: Option<&rouse_api::condition::Condition>,
) {
    match ready {
        Some(c) => status.set_condition(type_, c.status, &c.reason, &c.message),
        None => status.set_condition(type_, ConditionStatus::Unknown, "", ""),
    }
}

/// True when a `latestRevision` target still points at something other than the latest ready.
fn traffic_not_migrated(
    spec: &[TrafficTarget],
    resolved: &[TrafficTarget],
    c: &Configuration,
) -> bool {
    let latest = &c.status.latest_ready_revision_name;
    if latest.is_empty() {
        return false;
    }
    spec.iter()
        .zip(resolved)
        .any(|(s, r)| s.latest_revision == Some(true) && &r.revision_name != latest)
}

//! ServerlessService → how the revision is reached: in Serve mode its ready instances'
//! queue-proxies, in Proxy mode the activator (which is told every instance that is ready or
//! still starting, and probes them itself). With no ready instance the activator is always in
//! the path.
//!
//! An instance that fails readiness after it passed (NotReady) leaves both sets at once, as
//! Knative takes a pod out of its endpoints within `periodSeconds × failureThreshold`; it
//! comes back, and is probed again by the activator, when it passes again.

use std::net::SocketAddr;
use std::time::Duration;

use rouse_api::condition::Conditions;
use rouse_api::networking::{ServerlessService, SksMode};
use rouse_api::serving::Revision;
use rouse_runtime::InstanceState;

use super::Requeue;
use crate::networking::RevisionTraffic;
use crate::{Context, ReconcileError};

pub(super) fn reconcile(ctx: &Context, ns: &str, name: &str) -> Result<Requeue, ReconcileError> {
    let Some(sks) = ctx.client.get::<ServerlessService>(ns, name)? else {
        ctx.networking.remove_revision(ns, name);
        return Ok(None);
    };
    let Some(rev) = ctx.client.get::<Revision>(ns, name)? else {
        return Ok(None);
    };
    let (mode, ready) = program(ctx, ns, name, &sks, &rev);

    let mut status = sks.status.clone();
    status.observed_generation = sks.metadata.generation;
    status.service_name = name.to_string();
    status.private_service_name = format!("{name}-private");
    status.endpoints = match mode {
        SksMode::Serve => ready.iter().map(|a| a.to_string()).collect(),
        SksMode::Proxy => vec!["activator".to_string()],
    };
    if ready.is_empty() {
        status.mark_false(
            "EndpointsPopulated",
            "NoHealthyBackends",
            "No ready instance behind the revision.",
        );
    } else {
        status.mark_true("EndpointsPopulated");
    }
    // Proxy mode is always ready to take requests: the activator buffers them.
    status.mark_true("ActivatorEndpointsPopulated");
    status.mark_true("Ready");
    if status != sks.status {
        let mut updated = sks.clone();
        updated.status = status;
        ctx.client.update_status(&updated)?;
    }
    Ok(None)
}

/// Tells the data plane how the revision is reached now (its SKS mode, held at Proxy while no
/// instance is ready, its ready and live instances, its request settings); returns the mode
/// and the ready instances. Idempotent: programming the same state again changes nothing.
pub(super) fn program(
    ctx: &Context,
    ns: &str,
    name: &str,
    sks: &ServerlessService,
    rev: &Revision,
) -> (SksMode, Vec<SocketAddr>) {
    let instances = ctx.runtime.instances(ns, name);
    let mut ready: Vec<_> = instances
        .iter()
        .filter(|i| i.state == InstanceState::Ready)
        .map(|i| i.endpoint)
        .collect();
    ready.sort();
    // Starting instances too: the activator's own probe lets it use one the moment it is up.
    let mut backends: Vec<_> = instances
        .iter()
        .filter(|i| matches!(i.state, InstanceState::Starting | InstanceState::Ready))
        .map(|i| i.endpoint)
        .collect();
    backends.sort();
    let mode = if ready.is_empty() {
        SksMode::Proxy
    } else {
        sks.spec.mode
    };
    let secs = |s: Option<i64>| s.filter(|v| *v > 0).map(|v| Duration::from_secs(v as u64));
    ctx.networking.set_revision(
        ns,
        name,
        RevisionTraffic {
            mode,
            ready: ready.clone(),
            backends,
            container_concurrency: rev.spec.container_concurrency.unwrap_or(0).max(0) as u32,
            timeout: secs(rev.spec.timeout_seconds).unwrap_or(Duration::from_secs(300)),
            response_start_timeout: secs(rev.spec.response_start_timeout_seconds),
            h2c: rev.spec.is_h2c(),
            request_body_buffer: crate::workload::request_body_buffer(rev),
        },
    );

    (mode, ready)
}

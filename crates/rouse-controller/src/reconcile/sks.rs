//! ServerlessService → the revision's public endpoints. In Serve mode they are the ready
//! instances' queue-proxies; the gateway gets them in one atomic swap.

use rouse_api::condition::Conditions;
use rouse_api::networking::{ServerlessService, SksMode};
use rouse_runtime::InstanceState;

use super::Requeue;
use crate::{Context, ReconcileError};

pub(super) fn reconcile(ctx: &Context, ns: &str, name: &str) -> Result<Requeue, ReconcileError> {
    let Some(sks) = ctx.client.get::<ServerlessService>(ns, name)? else {
        ctx.networking.set_endpoints(ns, name, Vec::new());
        return Ok(None);
    };
    let mut ready: Vec<_> = ctx
        .runtime
        .instances(ns, name)
        .into_iter()
        .filter(|i| i.state == InstanceState::Ready)
        .map(|i| i.endpoint)
        .collect();
    ready.sort();
    let endpoints = match sks.spec.mode {
        SksMode::Serve | SksMode::Proxy => ready.clone(),
    };
    ctx.networking.set_endpoints(ns, name, endpoints.clone());

    let mut status = sks.status.clone();
    status.observed_generation = sks.metadata.generation;
    status.service_name = name.to_string();
    status.private_service_name = format!("{name}-private");
    status.endpoints = endpoints.iter().map(|a| a.to_string()).collect();
    if ready.is_empty() {
        status.mark_false(
            "EndpointsPopulated",
            "NoHealthyBackends",
            "No ready instance behind the revision yet.",
        );
        status.mark_unknown(
            "Ready",
            "NoHealthyBackends",
            "No ready instance behind the revision yet.",
        );
    } else {
        status.mark_true("EndpointsPopulated");
        status.mark_true("Ready");
    }
    if status != sks.status {
        let mut updated = sks.clone();
        updated.status = status;
        ctx.client.update_status(&updated)?;
    }
    Ok(None)
}

//! PodAutoscaler → the revision's instances through the runtime, and the PA's status (desired
//! and actual scale, ScaleTargetInitialized, Active). Until the autoscaling loop drives it, the
//! desired scale is `initial-scale`, bounded by min-scale and max-scale.

use rouse_api::autoscaling::PodAutoscaler;
use rouse_api::autoscaling::annotations::RevisionScaling;
use rouse_api::condition::Conditions;
use rouse_api::networking::ServerlessService;
use rouse_api::serving::Revision;
use rouse_runtime::InstanceState;

use super::Requeue;
use crate::workload::workload_for;
use crate::{Context, ReconcileError};

pub(super) fn reconcile(ctx: &Context, ns: &str, name: &str) -> Result<Requeue, ReconcileError> {
    let Some(pa) = ctx.client.get::<PodAutoscaler>(ns, name)? else {
        return Ok(None);
    };
    let Some(rev) = ctx.client.get::<Revision>(ns, name)? else {
        return Ok(None);
    };
    let scaling =
        RevisionScaling::from_annotations(&rev.metadata.annotations, &ctx.config.autoscaler);
    let desired = fixed_scale(&scaling);
    if let Ok(workload) = workload_for(&rev) {
        ctx.runtime.ensure(workload, desired);
    }
    let ready = ctx
        .runtime
        .instances(ns, name)
        .iter()
        .filter(|i| i.state == InstanceState::Ready)
        .count() as u32;

    let mut status = pa.status.clone();
    status.observed_generation = pa.metadata.generation;
    status.service_name = name.to_string();
    status.metrics_service_name = format!("{name}-private");
    status.desired_scale = Some(desired as i32);
    status.actual_scale = Some(ready as i32);
    let min_ready = scaling.min_scale.max(scaling.initial_scale).max(0) as u32;
    if !status.is_true("ScaleTargetInitialized") && ready >= min_ready.max(u32::from(desired > 0)) {
        status.mark_true("ScaleTargetInitialized");
    } else if status.get_condition("ScaleTargetInitialized").is_none() {
        status.mark_unknown("ScaleTargetInitialized", "Queued", "");
    }
    if desired == 0 {
        status.mark_false(
            "Active",
            "NoTraffic",
            "The target is not receiving traffic.",
        );
    } else if ready > 0 {
        status.mark_true("Active");
    } else {
        status.mark_unknown(
            "Active",
            "Queued",
            "Requests to the target are being buffered as resources are provisioned.",
        );
    }
    match ctx.client.get::<ServerlessService>(ns, name)? {
        Some(sks) => match sks.status.get_condition("Ready") {
            Some(c) => {
                let c = c.clone();
                status.set_condition("SKSReady", c.status, &c.reason, &c.message)
            }
            None => status.mark_unknown("SKSReady", "", ""),
        },
        None => status.mark_unknown("SKSReady", "NoService", "The SKS does not exist yet."),
    }
    status.derive_ready(&["ScaleTargetInitialized", "SKSReady"]);
    if status != pa.status {
        let mut updated = pa.clone();
        updated.status = status;
        ctx.client.update_status(&updated)?;
    }
    Ok(None)
}

/// The scale a revision holds without an autoscaling loop: initial-scale within the bounds.
fn fixed_scale(s: &RevisionScaling) -> u32 {
    let mut n = s.initial_scale.max(s.min_scale).max(0);
    if s.max_scale > 0 {
        n = n.min(s.max_scale);
    }
    n as u32
}

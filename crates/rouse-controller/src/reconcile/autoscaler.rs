//! PodAutoscaler → applies the KPA's decision (reference §3.5): bounds, initial scale, the
//! scale-to-zero gates with an explicit check that the gateway already sends the revision's
//! traffic to the activator, the SKS mode, the instance count through the runtime, and the
//! PA's status (desired and actual scale, ScaleTargetInitialized, Active).

use std::time::Duration;

use rouse_api::autoscaling::PodAutoscaler;
use rouse_api::autoscaling::annotations::RevisionScaling;
use rouse_api::condition::Conditions;
use rouse_api::networking::{ServerlessService, SksMode as ApiSksMode};
use rouse_api::serving::{Revision, Route};
use rouse_autoscaler::{Activity, Observed, SksMode, reconcile as apply_decision};
use tokio::time::Instant;

use super::Requeue;
use super::revision::progress_deadline;
use crate::autoscaling::ready_count;
use crate::workload::workload_for;
use crate::{Context, ReconcileError};

/// How soon to look again after asking whether the activator is in the path.
const PROBE_RECHECK: Duration = Duration::from_millis(100);

pub(super) fn reconcile(ctx: &Context, ns: &str, name: &str) -> Result<Requeue, ReconcileError> {
    let id = (ns.to_string(), name.to_string());
    let Some(pa) = ctx.client.get::<PodAutoscaler>(ns, name)? else {
        ctx.autoscaling.remove(&id);
        return Ok(None);
    };
    let Some(rev) = ctx.client.get::<Revision>(ns, name)? else {
        return Ok(None);
    };
    let cfg = &ctx.config.autoscaler;
    let scaling = RevisionScaling::from_annotations(&rev.metadata.annotations, cfg);
    let cc = rev.spec.container_concurrency.unwrap_or(0);
    let reachable = is_routed(ctx, &rev)?;
    let ready = ready_count(ctx, ns, name);
    let now = Instant::now();

    let (out, scale, pa_state, mode) = ctx.autoscaling.with_revision(
        &id,
        &scaling,
        cc,
        reachable,
        cfg,
        progress_deadline(&rev),
        ready,
        |st| {
            if st.scale < 0 {
                // The workload starts at initial-scale, as Knative's Deployment does.
                st.scale = initial_replicas(&scaling);
            }
            let decision = st.auto.status();
            let observed = Observed {
                now,
                desired: decision.desired_scale,
                excess_burst_capacity: decision.excess_burst_capacity,
                replicas: Some(st.scale),
                ready,
                proxy_since: (st.mode == SksMode::Proxy)
                    .then_some(st.proxy_since)
                    .flatten(),
                sks_mode: st.mode,
                activator_probe: st.activator_probe.take(),
            };
            let out = apply_decision(&st.params, &mut st.pa, &observed);
            if let Some(n) = out.scale_to {
                st.scale = n.max(0);
            }
            // No ready instance means nothing to serve from: the activator stays in the path.
            let mode = if ready == 0 { SksMode::Proxy } else { out.mode };
            if mode != st.mode {
                st.mode = mode;
                st.proxy_since = (mode == SksMode::Proxy).then_some(now);
            }
            if out.probe_activator {
                st.activator_probe = Some(ctx.networking.serving_through_activator(ns, name));
            }
            (out, st.scale, st.pa.clone(), st.mode)
        },
    );

    if let Ok(workload) = workload_for(&rev) {
        ctx.runtime.ensure(workload, scale.max(0) as u32);
    }
    // Activating (nothing ready, instances wanted): the activator learns the new instances now
    // and starts probing them, instead of after this reconcile's and the SKS's store writes.
    if ready == 0
        && scale > 0
        && let Some(sks) = ctx.client.get::<ServerlessService>(ns, name)?
    {
        super::sks::program(ctx, ns, name, &sks, &rev);
    }
    set_sks_mode(ctx, ns, name, mode, out.num_activators)?;

    let mut status = pa.status.clone();
    status.observed_generation = pa.metadata.generation;
    status.service_name = name.to_string();
    status.metrics_service_name = format!("{name}-private");
    status.desired_scale = pa_state.desired_scale.or(Some(scale));
    status.actual_scale = Some(ready);
    if pa_state.scale_target_initialized {
        status.mark_true("ScaleTargetInitialized");
    } else if status.get_condition("ScaleTargetInitialized").is_none() {
        status.mark_unknown("ScaleTargetInitialized", "Queued", "");
    }
    match pa_state.activity {
        Activity::Active => status.mark_true("Active"),
        Activity::Activating => status.mark_unknown("Active", pa_state.reason, pa_state.message),
        Activity::Inactive => status.mark_false("Active", pa_state.reason, pa_state.message),
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
    let requeue = if out.probe_activator {
        Some(PROBE_RECHECK)
    } else {
        out.requeue_after
    };
    Ok(requeue)
}

/// Replicas a new revision starts with: initial-scale within the bounds.
fn initial_replicas(s: &RevisionScaling) -> i32 {
    let mut n = s.initial_scale.max(s.min_scale).max(0);
    if s.max_scale > 0 {
        n = n.min(s.max_scale);
    }
    n
}

/// A revision is reachable while some route sends it traffic (or it is the newest of its
/// configuration, about to be routed); unreachable revisions ignore min-scale.
fn is_routed(ctx: &Context, rev: &Revision) -> Result<bool, ReconcileError> {
    let ns = &rev.metadata.namespace;
    let name = &rev.metadata.name;
    let routes = ctx.client.list::<Route>(Some(ns))?;
    let routed = routes.iter().any(|r| {
        r.status.traffic.iter().any(|t| &t.revision_name == name)
            || r.spec.traffic.iter().any(|t| &t.revision_name == name)
    });
    if routed {
        return Ok(true);
    }
    // Not routed yet: the latest revision of a configuration a route follows is on its way.
    let config = rev
        .metadata
        .labels
        .get(rouse_api::serving::LABEL_CONFIGURATION)
        .cloned()
        .unwrap_or_default();
    let follows = routes.iter().any(|r| {
        r.spec
            .traffic
            .iter()
            .any(|t| t.configuration_name == config && t.revision_name.is_empty())
    });
    let latest = ctx
        .client
        .get::<rouse_api::serving::Configuration>(ns, &config)?
        .is_some_and(|c| c.status.latest_created_revision_name == *name);
    Ok(follows && latest)
}

/// Writes the decided mode (and Knative's activator count, informational locally: there is
/// one in-process activator) into the SKS spec; its reconciler programs the gateway.
fn set_sks_mode(
    ctx: &Context,
    ns: &str,
    name: &str,
    mode: SksMode,
    num_activators: i32,
) -> Result<(), ReconcileError> {
    let want = match mode {
        SksMode::Serve => ApiSksMode::Serve,
        SksMode::Proxy => ApiSksMode::Proxy,
    };
    if let Some(sks) = ctx.client.get::<ServerlessService>(ns, name)?
        && (sks.spec.mode != want || sks.spec.num_activators != num_activators)
    {
        let mut next = sks;
        next.spec.mode = want;
        next.spec.num_activators = num_activators;
        ctx.client.update(&next)?;
    }
    Ok(())
}

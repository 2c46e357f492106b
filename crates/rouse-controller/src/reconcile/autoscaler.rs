//! PodAutoscaler → applies the KPA's decision (reference §3.5): bounds, initial scale, the
//! scale-to-zero gates with an explicit check that the gateway already sends the revision's
//! traffic to the activator, the SKS mode, the instance count through the runtime, and the
//! PA's status (desired and actual scale, ScaleTargetInitialized, Active).

use std::time::Duration;

use rouse_api::autoscaling::PodAutoscaler;
use rouse_api::autoscaling::annotations::RevisionScaling;
use rouse_api::condition::Conditions;
use rouse_api::networking::{ServerlessService, SksMode as ApiSksMode};
use rouse_api::serving::Revision;
use rouse_autoscaler::{Activity, Observed, SksMode, reconcile as apply_decision};
use tokio::time::Instant;

use super::Requeue;
use super::revision::progress_deadline;
use crate::autoscaling::ready_count;
use crate::workload::workload_for_runtime;
use crate::{Context, ReconcileError, RouteRef};

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
    let config = ctx.config.get();
    let cfg = &config.autoscaler;
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

    if let Ok(workload) = workload_for_runtime(&rev, ctx.runtime.resolves_env_sources()) {
        ctx.runtime.ensure(workload, scale.max(0) as u32);
    }
    // A scale-up past the limit on instances: requests get 503 with why, not a long wait.
    ctx.networking
        .set_scale_refusal(ns, name, ctx.runtime.scale_refusal(ns, name));
    // Instances wanted that are not ready yet (activating, or scaling up): the activator
    // learns the new ones now and starts probing them, instead of after this reconcile's
    // store writes and the SKS reconcile.
    if scale > ready
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

/// A revision is reachable while some route sends it traffic or names it (or it is the newest
/// of a configuration a route follows, about to be routed); unreachable revisions ignore
/// min-scale. Read from the controller's route index, not by listing every route.
fn is_routed(ctx: &Context, rev: &Revision) -> Result<bool, ReconcileError> {
    let ns = &rev.metadata.namespace;
    let name = &rev.metadata.name;
    let refs = &ctx.route_refs;
    if refs.any(ns, RouteRef::Serving(name.clone()))
        || refs.any(ns, RouteRef::Revision(name.clone()))
    {
        return Ok(true);
    }
    // Not routed yet: the latest revision of a configuration a route follows is on its way.
    let Some(config) = rev
        .metadata
        .labels
        .get(rouse_api::serving::LABEL_CONFIGURATION)
        .filter(|c| !c.is_empty())
    else {
        return Ok(false);
    };
    if !refs.any(ns, RouteRef::Configuration(config.clone())) {
        return Ok(false);
    }
    Ok(ctx
        .client
        .get::<rouse_api::serving::Configuration>(ns, config)?
        .is_some_and(|c| c.status.latest_created_revision_name == *name))
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rouse_api::meta::Resource;
    use rouse_api::serving::{Configuration, LABEL_CONFIGURATION};
    use rouse_runtime::ProcessRuntime;
    use rouse_store::EmbeddedStore;
    use serde_json::json;

    use super::*;
    use crate::networking::{ActivatorLoad, HostRoute, Networking, RevisionTraffic};
    use crate::{Controller, RouteRefs};

    fn revision(ns: &str, name: &str, config: &str) -> Revision {
        let mut r = Revision::new_named(ns, name);
        r.metadata
            .labels
            .insert(LABEL_CONFIGURATION.to_string(), config.to_string());
        r
    }

    fn route(ns: &str, spec: serde_json::Value, status: serde_json::Value) -> Vec<RouteRef> {
        RouteRefs::refs_of(&json!({
            "metadata": {"namespace": ns, "name": "r"},
            "spec": {"traffic": spec},
            "status": {"traffic": status},
        }))
    }

    /// A data plane that is never reached: this test reads only the controller's own index.
    struct Unplugged;

    impl Networking for Unplugged {
        fn set_routes(&self, _: Vec<HostRoute>) {}
        fn set_revision(&self, _: &str, _: &str, _: RevisionTraffic) {}
        fn remove_revision(&self, _: &str, _: &str) {}
        fn serving_through_activator(&self, _: &str, _: &str) -> bool {
            false
        }
        fn take_activator_stats(&self) -> Vec<ActivatorLoad> {
            Vec::new()
        }
        fn ingress_state(&self, _: &crate::Key) -> crate::networking::IngressState {
            crate::networking::IngressState::not_configured()
        }
        fn subscribe_ingresses(&self) -> Option<tokio::sync::broadcast::Receiver<crate::Key>> {
            None
        }
    }

    #[tokio::test]
    async fn routed_is_read_from_the_route_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let networking = Arc::new(Unplugged);
        let runtime = ProcessRuntime::new(dir.path().to_path_buf());
        let ctx = Controller::new(
            store,
            runtime,
            networking,
            rouse_api::config::SharedConfig::default(),
            "localhost".into(),
        )
        .context();
        let created = ctx
            .client
            .create(&Configuration::new_named("ns", "c"))
            .unwrap();
        let mut config = created.clone();
        config.status.latest_created_revision_name = "c-00002".into();
        ctx.client.update_status(&config).unwrap();
        let (old, latest) = (
            revision("ns", "c-00001", "c"),
            revision("ns", "c-00002", "c"),
        );

        // No route names anything: nothing is reachable.
        assert!(!is_routed(&ctx, &old).unwrap());
        assert!(!is_routed(&ctx, &latest).unwrap());

        // A route follows the configuration: only its latest revision is on its way.
        let follows = route(
            "ns",
            json!([{"configurationName": "c", "percent": 100}]),
            json!([]),
        );
        ctx.route_refs.set("ns", "r", Some(follows.clone()));
        assert!(!is_routed(&ctx, &old).unwrap());
        assert!(is_routed(&ctx, &latest).unwrap());
        // The same route in another namespace reaches nothing here.
        ctx.route_refs.set("ns", "r", None);
        ctx.route_refs.set("other", "r", Some(follows));
        assert!(!is_routed(&ctx, &latest).unwrap());

        // Pinned by the spec, or served now by the status.
        let pinned = route(
            "ns",
            json!([{"revisionName": "c-00001", "configurationName": "c", "percent": 100}]),
            json!([]),
        );
        ctx.route_refs.set("ns", "r", Some(pinned));
        assert!(is_routed(&ctx, &old).unwrap());
        assert!(!is_routed(&ctx, &latest).unwrap(), "a pin follows nothing");
        let serving = route(
            "ns",
            json!([]),
            json!([{"revisionName": "c-00001", "percent": 100}]),
        );
        ctx.route_refs.set("ns", "r", Some(serving));
        assert!(is_routed(&ctx, &old).unwrap());

        // The route is gone.
        ctx.route_refs.set("ns", "r", None);
        assert!(!is_routed(&ctx, &old).unwrap());
    }
}

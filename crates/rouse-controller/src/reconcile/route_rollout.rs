//! The Route reconciler's side of a gradual rollout ([`crate::rollout`]): which duration
//! applies, the shares served now in `status.traffic`, the `RolloutInProgress` condition, and
//! the state kept in the Route's `status.annotations` for the next reconcile (and the next
//! controller).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rouse_api::condition::Conditions;
use rouse_api::duration::parse_go_duration;
use rouse_api::serving::{
    ANNOTATION_ROLLOUT_DURATION, ANNOTATION_ROLLOUT_DURATION_LEGACY, Route, RouteStatus,
    TrafficTarget,
};

use crate::Context;
use crate::rollout::{ANNOTATION_ROLLOUT, Rollout};

/// A rollout being served: what to keep once the data plane serves it.
pub(super) struct Rolling {
    rollout: Rollout,
    duration_secs: u64,
}

/// Now, as the rollout state counts time (Unix nanoseconds).
pub(super) fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The route's rollout duration: its annotation (propagated from its Service), else
/// `config-network`'s `rollout-duration`. Validation already refused malformed values.
fn duration_secs(ctx: &Context, route: &Route) -> u64 {
    let annotations = &route.metadata.annotations;
    let own = [
        ANNOTATION_ROLLOUT_DURATION,
        ANNOTATION_ROLLOUT_DURATION_LEGACY,
    ]
    .iter()
    .find_map(|k| annotations.get(*k).filter(|v| !v.is_empty()))
    .and_then(|v| parse_go_duration(v).ok())
    .map(|d| d.as_secs())
    .unwrap_or(0);
    if own > 0 {
        own
    } else {
        ctx.config.get().network.rollout_duration_seconds
    }
}

/// Steps the route's rollout to `now` and rewrites `status.traffic` to the shares to serve.
/// `None` when no rollout applies (off, or the traffic is not resolved this time).
pub(super) fn step(
    ctx: &Context,
    route: &Route,
    status: &mut RouteStatus,
    now: i64,
) -> Option<Rolling> {
    let duration_secs = duration_secs(ctx, route);
    if duration_secs == 0 {
        // Off: the spec's traffic at once, and no stale state to roll from if turned on later.
        status.annotations.remove(ANNOTATION_ROLLOUT);
        return None;
    }
    if !status.is_true("AllTrafficAssigned") {
        return None;
    }
    let prev = Rollout::parse(
        route
            .status
            .annotations
            .get(ANNOTATION_ROLLOUT)
            .map(String::as_str),
    );
    let desired = Rollout::desired(
        status
            .traffic
            .iter()
            .filter(|t| t.latest_revision == Some(true))
            .map(|t| {
                (
                    t.tag.as_str(),
                    t.configuration_name.as_str(),
                    t.revision_name.as_str(),
                    t.percent.unwrap_or(0),
                )
            }),
    );
    let (rollout, _) = desired.step(prev.as_ref(), now);
    status.traffic = served_traffic(&status.traffic, &rollout);
    if !rollout.done() {
        status.mark_unknown(
            "IngressReady",
            "RolloutInProgress",
            "A gradual rollout of the latest revision(s) is in progress.",
        );
    }
    Some(Rolling {
        rollout,
        duration_secs,
    })
}

impl Rolling {
    /// True while the shares still move (the route shows `RolloutInProgress`).
    pub(super) fn in_progress(&self) -> bool {
        !self.rollout.done()
    }

    /// Called once the data plane serves the shares: a rollout that just started plans its
    /// steps; the state is kept in the status. Returns when to look again for the next step.
    pub(super) fn served(mut self, status: &mut RouteStatus, now: i64) -> Option<Duration> {
        self.rollout.observe_ready(now, self.duration_secs);
        status
            .annotations
            .insert(ANNOTATION_ROLLOUT.to_string(), self.rollout.to_json());
        self.rollout
            .configurations
            .iter()
            .map(|c| c.step_params.next_step_time)
            .filter(|t| *t > 0)
            .min()
            .map(|t| Duration::from_nanos(u64::try_from(t - now).unwrap_or(0)))
    }
}

/// The resolved targets with each rolling `latestRevision` target replaced by its revisions'
/// current shares (Knative's status shows the split while a rollout runs).
fn served_traffic(resolved: &[TrafficTarget], rollout: &Rollout) -> Vec<TrafficTarget> {
    let mut out = Vec::with_capacity(resolved.len() + 1);
    let mut expanded: Vec<(&str, &str)> = Vec::new();
    for t in resolved {
        let rolling = (t.latest_revision == Some(true))
            .then(|| rollout.get(&t.tag, &t.configuration_name))
            .flatten();
        let Some(c) = rolling else {
            out.push(t.clone());
            continue;
        };
        // Targets merged into one rollout are shown once, with the merged shares.
        let key = (t.tag.as_str(), t.configuration_name.as_str());
        if expanded.contains(&key) {
            continue;
        }
        expanded.push(key);
        out.extend(c.revisions.iter().map(|r| TrafficTarget {
            revision_name: r.revision_name.clone(),
            percent: Some(r.percent),
            ..t.clone()
        }));
    }
    out
}

//! One revision's autoscaler: its metric windows, decider and last decision together, the
//! piece the platform keeps per revision (Knative's collection + scaler runner).

use rouse_api::autoscaling::annotations::RevisionScaling;
use rouse_api::config::autoscaler::AutoscalerConfig;
use tokio::time::Instant;

use crate::collector::{Collection, Stat};
use crate::decider::{Decider, DeciderSpec, DeciderStatus, ScaleResult};

/// Windows, decider and status for one revision.
#[derive(Debug, Clone)]
pub struct RevisionAutoscaler {
    collection: Collection,
    decider: Decider,
    status: DeciderStatus,
}

impl RevisionAutoscaler {
    /// Starts autoscaling a revision at `now` with `ready` instances (bucket seconds count
    /// from `now`).
    pub fn new(
        scaling: &RevisionScaling,
        container_concurrency: i64,
        cfg: &AutoscalerConfig,
        reachable: bool,
        ready: i32,
        now: Instant,
    ) -> Self {
        let spec = DeciderSpec::new(scaling, container_concurrency, cfg, reachable);
        Self {
            collection: Collection::for_revision(scaling, now),
            status: DeciderStatus::initial(&spec),
            decider: Decider::new(spec, ready, now),
        }
    }

    /// Records a stat (from a scrape or an activator). Returns true when it is a "poke": the
    /// revision is at zero and the stat carries load, so [`tick`](Self::tick) should run now
    /// rather than at the next 2 s tick.
    pub fn record(&mut self, now: Instant, stat: &Stat) -> bool {
        self.collection.record(now, stat);
        self.status.should_poke(stat.average_concurrent_requests)
    }

    /// One decider run. `None` when there is no data (the last decision stands); otherwise
    /// the result and whether the reconciler must hear of it (desired changed or the burst
    /// capacity changed sign).
    pub fn tick(&mut self, now: Instant, ready: i32) -> Option<(ScaleResult, bool)> {
        let metric = self.decider.spec().metric;
        let (stable, panic) = self.collection.stable_and_panic(metric, now).ok()?;
        let r = self.decider.scale(now, ready, stable, panic);
        let changed = self.status.update(&r);
        Some((r, changed))
    }

    /// The last decision (desired -1 before the first).
    pub fn status(&self) -> DeciderStatus {
        self.status
    }

    /// The decider (spec and panic state).
    pub fn decider(&self) -> &Decider {
        &self.decider
    }

    /// The metric windows.
    pub fn collection(&self) -> &Collection {
        &self.collection
    }

    /// Takes a new spec (config change), resizing the windows to the new stable and panic
    /// windows.
    pub fn update(&mut self, scaling: &RevisionScaling, spec: DeciderSpec, now: Instant) {
        self.collection
            .resize(scaling.window, scaling.panic_window(), now);
        self.collection
            .set_scrape_target(scaling.target_burst_capacity != -1.0);
        self.decider.update(spec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn record_tick_and_poke() {
        let cfg = AutoscalerConfig::default();
        let scaling = RevisionScaling::from_annotations(&Default::default(), &cfg);
        let t0 = Instant::now();
        let mut a = RevisionAutoscaler::new(&scaling, 0, &cfg, true, 1, t0);
        assert_eq!(a.status().desired_scale, -1);
        assert_eq!(a.status().excess_burst_capacity, -111);
        // No stat yet, instances scraped: no data, nothing decided.
        assert_eq!(a.tick(t0 + Duration::from_secs(2), 1), None);
        let load = Stat {
            average_concurrent_requests: 35.0,
            ..Stat::default()
        };
        assert!(!a.record(t0 + Duration::from_secs(3), &load));
        let (r, changed) = a.tick(t0 + Duration::from_secs(4), 1).unwrap();
        assert_eq!(r.desired, 1);
        assert!(changed);
        // Zero load for a whole window → desired 0; then a stat with load pokes.
        let idle = Stat::default();
        for s in 4..=64 {
            a.record(t0 + Duration::from_secs(s), &idle);
        }
        let (r, _) = a.tick(t0 + Duration::from_secs(64), 1).unwrap();
        assert_eq!(r.desired, 0);
        assert!(!a.record(t0 + Duration::from_secs(65), &idle));
        assert!(a.record(t0 + Duration::from_secs(65), &load));
    }
}

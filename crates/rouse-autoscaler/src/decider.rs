//! The KPA decider (reference §3.3–3.4): each tick turns the stable and panic window averages
//! and the ready instance count into a desired scale and the excess burst capacity.

use std::collections::VecDeque;
use std::time::Duration;

use rouse_api::autoscaling::annotations::RevisionScaling;
use rouse_api::config::autoscaler::AutoscalerConfig;
use tokio::time::Instant;

/// How often the decider runs.
pub const TICK_INTERVAL: Duration = Duration::from_secs(2);

/// The metric a revision scales on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Metric {
    /// In-flight requests per instance (the default).
    #[default]
    Concurrency,
    /// Requests per second per instance.
    Rps,
}

/// Everything the decider needs to know about one revision (Knative's `DeciderSpec`).
#[derive(Debug, Clone, PartialEq)]
pub struct DeciderSpec {
    pub max_scale_up_rate: f64,
    pub max_scale_down_rate: f64,
    pub metric: Metric,
    /// Per-instance value to aim for (e.g. 70).
    pub target_value: f64,
    /// Per-instance maximum (e.g. 100); used for the burst capacity.
    pub total_value: f64,
    pub target_burst_capacity: f64,
    pub activator_capacity: f64,
    /// Panic threshold as a ratio (2.0 = 200 %).
    pub panic_threshold: f64,
    pub stable_window: Duration,
    pub scale_down_delay: Duration,
    pub initial_scale: i32,
    /// False when the revision receives no traffic (routing state reserve): scale-downs are
    /// then not rate-limited and not delayed.
    pub reachable: bool,
    /// Smallest non-zero scale; 0 or 1 means no floor.
    pub activation_scale: i32,
}

impl DeciderSpec {
    /// Builds the spec from a revision's resolved settings, its `containerConcurrency` and
    /// the cluster config.
    pub fn new(
        scaling: &RevisionScaling,
        container_concurrency: i64,
        cfg: &AutoscalerConfig,
        reachable: bool,
    ) -> Self {
        let (target_value, total_value) = scaling.metric_target(container_concurrency, cfg);
        Self {
            max_scale_up_rate: cfg.max_scale_up_rate,
            max_scale_down_rate: cfg.max_scale_down_rate,
            metric: if scaling.is_rps() {
                Metric::Rps
            } else {
                Metric::Concurrency
            },
            target_value,
            total_value,
            target_burst_capacity: scaling.target_burst_capacity,
            activator_capacity: cfg.activator_capacity,
            panic_threshold: scaling.panic_threshold(),
            stable_window: scaling.window,
            scale_down_delay: scaling.scale_down_delay,
            initial_scale: scaling.initial_scale,
            reachable,
            activation_scale: scaling.activation_scale,
        }
    }
}

/// The outcome of one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleResult {
    /// Desired instances after activation scale, panic and scale-down delay.
    pub desired: i32,
    /// Spare capacity beyond the target burst: ≥ 0 means the activator may leave the path.
    pub excess_burst_capacity: i32,
    /// Whether the decider is in panic mode after this tick.
    pub in_panic: bool,
    /// ceil(stable / target), before rate limits.
    pub stable_pods: i32,
    /// ceil(panic / target), before rate limits.
    pub panic_pods: i32,
}

/// The KPA decider for one revision: panic state and scale-down delay carried across ticks.
#[derive(Debug, Clone)]
pub struct Decider {
    spec: DeciderSpec,
    epoch: Instant,
    /// When panic was entered or last renewed; `None` when not panicking.
    panic_time: Option<Instant>,
    /// Highest desired scale seen during the current panic.
    max_panic_pods: i32,
    delay: Option<MaxWindow>,
}

impl Decider {
    /// A new decider at `now` with `ready` instances. It starts in panic mode when more than
    /// one instance is ready, so that an autoscaler restart (which loses the metric history)
    /// does not scale down.
    pub fn new(spec: DeciderSpec, ready: i32, now: Instant) -> Self {
        let delay = delay_window(spec.scale_down_delay);
        Self {
            spec,
            epoch: now,
            panic_time: (ready > 1).then_some(now),
            max_panic_pods: ready,
            delay,
        }
    }

    /// The current spec.
    pub fn spec(&self) -> &DeciderSpec {
        &self.spec
    }

    /// Replaces the spec (config change). Panic state is kept; a changed scale-down delay
    /// starts a fresh delay window.
    pub fn update(&mut self, spec: DeciderSpec) {
        if spec.scale_down_delay != self.spec.scale_down_delay {
            self.delay = delay_window(spec.scale_down_delay);
        }
        self.spec = spec;
    }

    /// True while in panic mode.
    pub fn in_panic(&self) -> bool {
        self.panic_time.is_some()
    }

    /// One tick at `now`: `ready` instances and the observed stable and panic averages of the
    /// spec's metric.
    pub fn scale(&mut self, now: Instant, ready: i32, stable: f64, panic: f64) -> ScaleResult {
        let spec = &self.spec;
        let r = f64::from(ready.max(1));
        // Rate limits: ceil/floor so that a slow rate can still move by one instance.
        let max_up = (spec.max_scale_up_rate * r).ceil();
        let max_down = if spec.reachable {
            (r / spec.max_scale_down_rate).floor()
        } else {
            0.0
        };
        let dspc = (stable / spec.target_value).ceil();
        let dppc = (panic / spec.target_value).ceil();
        let mut stable_pods = dspc.max(max_down).min(max_up) as i32;
        let mut panic_pods = dppc.max(max_down).min(max_up) as i32;
        if spec.activation_scale > 1 {
            if dspc > 0.0 {
                stable_pods = stable_pods.max(spec.activation_scale);
            }
            if dppc > 0.0 {
                panic_pods = panic_pods.max(spec.activation_scale);
            }
        }

        let over = dppc / r >= spec.panic_threshold;
        if over {
            // Enter, or renew while still over the threshold.
            self.panic_time = Some(now);
        } else if let Some(t) = self.panic_time
            && t + spec.stable_window < now
        {
            // The surge has had a full stable window to reach the stable average.
            self.panic_time = None;
            self.max_panic_pods = 0;
        }

        let mut desired = stable_pods;
        if self.panic_time.is_some() {
            // Provision for whichever is larger, and never scale down while panicking.
            desired = desired.max(panic_pods);
            self.max_panic_pods = self.max_panic_pods.max(desired);
            desired = self.max_panic_pods;
        }

        if spec.reachable
            && let Some(w) = &mut self.delay
        {
            let index =
                now.saturating_duration_since(self.epoch).as_secs() / TICK_INTERVAL.as_secs();
            w.record(index, desired);
            desired = w.current();
        }

        let tbc = spec.target_burst_capacity;
        let ebc = if tbc == 0.0 {
            0.0
        } else if tbc > 0.0 {
            (f64::from(ready) * spec.total_value - tbc - panic).floor()
        } else {
            -1.0
        };
        ScaleResult {
            desired,
            excess_burst_capacity: ebc as i32,
            in_panic: self.panic_time.is_some(),
            stable_pods: dspc as i32,
            panic_pods: dppc as i32,
        }
    }
}

fn delay_window(delay: Duration) -> Option<MaxWindow> {
    (!delay.is_zero()).then(|| {
        let n = delay.as_nanos().div_ceil(TICK_INTERVAL.as_nanos()) as u64;
        MaxWindow::new(n.max(1))
    })
}

/// The maximum of the values recorded over the last `size` indexes (a monotonic deque).
#[derive(Debug, Clone)]
pub struct MaxWindow {
    size: u64,
    /// (index, value), values strictly decreasing from front to back.
    entries: VecDeque<(u64, i32)>,
}

impl MaxWindow {
    /// A window spanning `size` consecutive indexes.
    pub fn new(size: u64) -> Self {
        Self {
            size,
            entries: VecDeque::new(),
        }
    }

    /// Records `v` at a non-decreasing `index`.
    pub fn record(&mut self, index: u64, mut v: i32) {
        // Smaller-or-equal older values can never be the maximum again.
        while self.entries.back().is_some_and(|&(_, b)| v >= b) {
            self.entries.pop_back();
        }
        while self
            .entries
            .front()
            .is_some_and(|&(i, _)| index.saturating_sub(i) >= self.size)
        {
            self.entries.pop_front();
        }
        if let Some(&(i, b)) = self.entries.back()
            && i == index
        {
            v = v.max(b);
            self.entries.pop_back();
        }
        self.entries.push_back((index, v));
    }

    /// The maximum over the window (0 before any record).
    pub fn current(&self) -> i32 {
        self.entries.front().map_or(0, |&(_, v)| v)
    }
}

/// What the reconciler last heard from the decider (Knative's `DeciderStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeciderStatus {
    /// -1 until the first valid tick.
    pub desired_scale: i32,
    pub excess_burst_capacity: i32,
}

impl DeciderStatus {
    /// The status of a decider that has not ticked yet: desired -1; EBC = TBC when TBC is 0
    /// or -1, else initial-scale × total − TBC (1 × 100 − 211 = −111 by default).
    pub fn initial(spec: &DeciderSpec) -> Self {
        let tbc = spec.target_burst_capacity;
        let ebc = if tbc == 0.0 || tbc == -1.0 {
            tbc as i32
        } else {
            (f64::from(spec.initial_scale) * spec.total_value - tbc) as i32
        };
        Self {
            desired_scale: -1,
            excess_burst_capacity: ebc,
        }
    }

    /// Takes a tick's result; true when the reconciler must be told (desired changed or the
    /// burst capacity changed sign).
    pub fn update(&mut self, r: &ScaleResult) -> bool {
        let changed = self.desired_scale != r.desired
            || (self.excess_burst_capacity < 0) != (r.excess_burst_capacity < 0);
        self.desired_scale = r.desired;
        self.excess_burst_capacity = r.excess_burst_capacity;
        changed
    }

    /// True when a stat should make the decider run at once (a "poke"): the revision is at
    /// zero and the stat carries load.
    pub fn should_poke(&self, average_concurrent_requests: f64) -> bool {
        self.desired_scale == 0 && average_concurrent_requests != 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Knative's defaults: target 70, total 100, TBC 211, stable 60 s, threshold 2.0.
    fn spec() -> DeciderSpec {
        DeciderSpec::new(
            &RevisionScaling::from_annotations(&Default::default(), &AutoscalerConfig::default()),
            0,
            &AutoscalerConfig::default(),
            true,
        )
    }

    fn at(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn spec_from_defaults() {
        let s = spec();
        assert_eq!(s.target_value, 70.0);
        assert_eq!(s.total_value, 100.0);
        assert_eq!(s.target_burst_capacity, 211.0);
        assert_eq!(s.panic_threshold, 2.0);
        assert_eq!(s.max_scale_up_rate, 1000.0);
        assert_eq!(s.max_scale_down_rate, 2.0);
        assert_eq!(s.stable_window, Duration::from_secs(60));
        assert_eq!(s.metric, Metric::Concurrency);
    }

    #[test]
    fn initial_status_ebc() {
        let s = spec();
        assert_eq!(
            DeciderStatus::initial(&s),
            DeciderStatus {
                desired_scale: -1,
                excess_burst_capacity: -111
            }
        );
        let zero = DeciderSpec {
            target_burst_capacity: 0.0,
            ..spec()
        };
        assert_eq!(DeciderStatus::initial(&zero).excess_burst_capacity, 0);
        let unlimited = DeciderSpec {
            target_burst_capacity: -1.0,
            ..spec()
        };
        assert_eq!(DeciderStatus::initial(&unlimited).excess_burst_capacity, -1);
        let three = DeciderSpec {
            initial_scale: 3,
            ..spec()
        };
        assert_eq!(DeciderStatus::initial(&three).excess_burst_capacity, 89);
    }

    /// (ready, stable, panic) → desired, for a fresh non-panicking decider.
    #[test]
    fn stable_mode_table() {
        let cases: &[(i32, f64, f64, i32)] = &[
            // 150 / 70 = 2.14 → 3.
            (1, 150.0, 150.0, 3),
            // Exactly on target.
            (2, 140.0, 140.0, 2),
            // Any load at all needs one instance.
            (1, 0.5, 0.5, 1),
            // No load: zero.
            (1, 0.0, 0.0, 0),
            // Scale-down limited to ready / 2: 10 ready, load for 1 → 5.
            (10, 70.0, 70.0, 5),
            // 3 ready → floor(1.5) = 1.
            (3, 0.0, 0.0, 1),
        ];
        let t0 = Instant::now();
        for &(ready, s, p, want) in cases {
            let mut d = Decider::new(spec(), 1, t0);
            let r = d.scale(at(t0, 2), ready, s, p);
            assert_eq!(r.desired, want, "ready={ready} stable={s} panic={p}");
            assert!(!r.in_panic || p / 70.0 / f64::from(ready.max(1)) >= 2.0);
        }
    }

    #[test]
    fn max_scale_up_rate_limits_growth() {
        let t0 = Instant::now();
        let s = DeciderSpec {
            max_scale_up_rate: 2.0,
            ..spec()
        };
        let mut d = Decider::new(s.clone(), 1, t0);
        // Wants ceil(700/70) = 10 but at most ceil(2 × 3) = 6 (stable; panic also clamped).
        let r = d.scale(at(t0, 2), 3, 700.0, 700.0);
        assert_eq!(r.desired, 6);
        // A slow rate still allows one more instance: ceil(1.1 × 2) = 3.
        let slow = DeciderSpec {
            max_scale_up_rate: 1.1,
            ..spec()
        };
        let mut d = Decider::new(slow, 1, t0);
        assert_eq!(d.scale(at(t0, 2), 2, 210.0, 0.0).desired, 3);
    }

    #[test]
    fn unreachable_is_not_rate_limited_down() {
        let t0 = Instant::now();
        let s = DeciderSpec {
            reachable: false,
            ..spec()
        };
        let mut d = Decider::new(s, 1, t0);
        assert_eq!(d.scale(at(t0, 2), 10, 0.0, 0.0).desired, 0);
    }

    #[test]
    fn activation_scale_floors_non_zero_decisions() {
        let t0 = Instant::now();
        let s = DeciderSpec {
            activation_scale: 3,
            ..spec()
        };
        let mut d = Decider::new(s.clone(), 0, t0);
        assert_eq!(d.scale(at(t0, 2), 0, 1.0, 1.0).desired, 3);
        let mut d = Decider::new(s.clone(), 0, t0);
        // Zero load stays zero.
        assert_eq!(d.scale(at(t0, 2), 0, 0.0, 0.0).desired, 0);
        // Above the floor, the computed value wins.
        let mut d = Decider::new(s, 5, t0);
        d.panic_time = None;
        assert_eq!(d.scale(at(t0, 2), 5, 350.0, 350.0).desired, 5);
    }

    #[test]
    fn panic_entry_renewal_and_exit() {
        let t0 = Instant::now();
        let mut d = Decider::new(spec(), 1, t0);
        // 1 ready, panic average 140 → dppc 2 → 2/1 ≥ 2.0: panic, desired max(1, 2) = 2.
        let r = d.scale(at(t0, 2), 1, 50.0, 140.0);
        assert!(r.in_panic);
        assert_eq!(r.desired, 2);
        // Under the threshold with 2 ready (dppc 1, 1/2 < 2): panic stays (entered at t=2,
        // not yet a stable window ago), and no scale-down below 2.
        let r = d.scale(at(t0, 4), 2, 10.0, 70.0);
        assert!(r.in_panic);
        assert_eq!(r.desired, 2);
        // Renewal at t=30: over again (4 ready × 2 = 8 ≤ dppc 9).
        let r = d.scale(at(t0, 30), 4, 100.0, 630.0);
        assert!(r.in_panic);
        assert_eq!(r.desired, 9);
        // At t = 30 + 60 = 90 the window has not fully passed (needs strictly after).
        let r = d.scale(at(t0, 90), 9, 70.0, 70.0);
        assert!(r.in_panic);
        assert_eq!(r.desired, 9);
        // At t = 92: exit; desired falls to the stable value, rate-limited to 9/2 → 4.
        let r = d.scale(at(t0, 92), 9, 70.0, 70.0);
        assert!(!r.in_panic);
        assert_eq!(r.desired, 4);
    }

    #[test]
    fn no_scale_down_while_panicking() {
        let t0 = Instant::now();
        let mut d = Decider::new(spec(), 1, t0);
        assert_eq!(d.scale(at(t0, 2), 1, 0.0, 700.0).desired, 10);
        // Load vanishes: still 10 for the whole panic.
        for s in (4..=62).step_by(2) {
            let r = d.scale(at(t0, s), 10, 0.0, 0.0);
            assert!(r.in_panic, "t={s}");
            assert_eq!(r.desired, 10, "t={s}");
        }
        let r = d.scale(at(t0, 64), 10, 0.0, 0.0);
        assert!(!r.in_panic);
        assert_eq!(r.desired, 5);
    }

    #[test]
    fn stable_larger_than_panic_is_honoured_in_panic() {
        let t0 = Instant::now();
        let mut d = Decider::new(spec(), 1, t0);
        d.scale(at(t0, 2), 1, 0.0, 140.0);
        // In panic, stable 700 → 10 beats panic 140 → 2.
        assert_eq!(d.scale(at(t0, 4), 2, 700.0, 140.0).desired, 10);
    }

    #[test]
    fn new_decider_starts_in_panic_with_more_than_one_ready() {
        let t0 = Instant::now();
        let d = Decider::new(spec(), 1, t0);
        assert!(!d.in_panic());
        let mut d = Decider::new(spec(), 5, t0);
        assert!(d.in_panic());
        // No data yet (zeros): it keeps the 5 it started with.
        let r = d.scale(at(t0, 2), 5, 0.0, 0.0);
        assert!(r.in_panic);
        assert_eq!(r.desired, 5);
        // A stable window after creation it leaves panic and scales down by the rate.
        let r = d.scale(at(t0, 62), 5, 0.0, 0.0);
        assert!(!r.in_panic);
        assert_eq!(r.desired, 2);
    }

    #[test]
    fn scale_down_delay_holds_the_maximum() {
        let t0 = Instant::now();
        let s = DeciderSpec {
            scale_down_delay: Duration::from_secs(10),
            ..spec()
        };
        let mut d = Decider::new(s, 1, t0);
        assert_eq!(d.scale(at(t0, 2), 1, 350.0, 0.0).desired, 5);
        // Load drops at t=4: the 5 is held for 10 s (indexes 1..=5 of 2 s each).
        let held: Vec<i32> = (2..=6)
            .map(|k| d.scale(at(t0, 2 * k), 5, 70.0, 0.0).desired)
            .collect();
        // At t=12 the 5 from t=2 leaves the window; 5 ready → at most down to floor(5/2) = 2.
        assert_eq!(held, [5, 5, 5, 5, 2]);
        // That 2 is itself held now, though 3 ready would allow 1.
        assert_eq!(d.scale(at(t0, 14), 3, 70.0, 0.0).desired, 2);
    }

    #[test]
    fn scale_down_delay_ignored_when_unreachable() {
        let t0 = Instant::now();
        let s = DeciderSpec {
            scale_down_delay: Duration::from_secs(10),
            reachable: false,
            ..spec()
        };
        let mut d = Decider::new(s, 1, t0);
        assert_eq!(d.scale(at(t0, 2), 1, 350.0, 0.0).desired, 5);
        assert_eq!(d.scale(at(t0, 4), 5, 0.0, 0.0).desired, 0);
    }

    #[test]
    fn excess_burst_capacity_cases() {
        let t0 = Instant::now();
        // Default TBC 211: 1 ready × 100 − 211 − 0 = −111.
        let mut d = Decider::new(spec(), 1, t0);
        assert_eq!(d.scale(at(t0, 2), 1, 0.0, 0.0).excess_burst_capacity, -111);
        // 3 ready, panic 50.5: floor(300 − 211 − 50.5) = 38.
        let mut d = Decider::new(spec(), 1, t0);
        d.panic_time = None;
        assert_eq!(d.scale(at(t0, 2), 3, 50.5, 50.5).excess_burst_capacity, 38);
        // Raw ready count (0), not max(1, ready): 0 − 211 − 0.
        let mut d = Decider::new(spec(), 0, t0);
        assert_eq!(d.scale(at(t0, 2), 0, 0.0, 0.0).excess_burst_capacity, -211);
        // TBC 0 → 0 and TBC −1 → −1 whatever the load.
        for (tbc, want) in [(0.0, 0), (-1.0, -1)] {
            let s = DeciderSpec {
                target_burst_capacity: tbc,
                ..spec()
            };
            let mut d = Decider::new(s, 1, t0);
            assert_eq!(
                d.scale(at(t0, 2), 1, 500.0, 500.0).excess_burst_capacity,
                want
            );
        }
    }

    #[test]
    fn status_reports_changes_and_pokes() {
        let mut st = DeciderStatus::initial(&spec());
        let r = |desired, ebc| ScaleResult {
            desired,
            excess_burst_capacity: ebc,
            in_panic: false,
            stable_pods: 0,
            panic_pods: 0,
        };
        assert!(st.update(&r(1, -111)));
        // Same desired, EBC still negative: nothing to report.
        assert!(!st.update(&r(1, -50)));
        // Sign change of EBC: report.
        assert!(st.update(&r(1, 0)));
        assert!(st.update(&r(0, 0)));
        assert!(st.should_poke(1.0));
        assert!(!st.should_poke(0.0));
        st.update(&r(2, 0));
        assert!(!st.should_poke(1.0));
    }

    #[test]
    fn max_window_tracks_sliding_maximum() {
        let mut w = MaxWindow::new(3);
        w.record(0, 5);
        w.record(1, 2);
        w.record(2, 3);
        assert_eq!(w.current(), 5);
        w.record(3, 1);
        assert_eq!(w.current(), 3);
        w.record(4, 1);
        assert_eq!(w.current(), 3);
        w.record(5, 1);
        assert_eq!(w.current(), 1);
        // Same index twice keeps the larger.
        w.record(5, 4);
        w.record(5, 2);
        assert_eq!(w.current(), 4);
    }
}

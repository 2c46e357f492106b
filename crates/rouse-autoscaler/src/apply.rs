//! Applying a decision (reference §3.5) as a pure state machine: the PodAutoscaler reconciler's
//! bounds, initial scale, scale-to-zero gates, SKS mode and `Active` condition.
//!
//! The caller keeps a [`PaState`] per revision and calls [`reconcile`] whenever the decider's
//! status changes or a requeue timer fires, then carries out the [`Outcome`]: set the
//! workload's replicas, switch the SKS mode, probe the activator path, requeue.

use std::fmt;
use std::time::Duration;

use rouse_api::autoscaling::annotations::RevisionScaling;
use rouse_api::config::autoscaler::AutoscalerConfig;
use tokio::time::Instant;

use crate::decider::DeciderSpec;

/// Extra time beyond the progress deadline an activation may take before giving up.
pub const ACTIVATION_TIMEOUT_BUFFER: Duration = Duration::from_secs(30);
/// Requeue period after starting an activator probe.
pub const PROBE_REQUEUE: Duration = Duration::from_secs(1);
/// Requeue period while deactivating with the SKS already in Proxy mode.
pub const PROXY_REQUEUE: Duration = Duration::from_secs(3);
/// Fewest activators a revision is spread over.
pub const MIN_ACTIVATORS: i32 = 2;
/// Condition reason: scaled to zero.
pub const REASON_NO_TRAFFIC: &str = "NoTraffic";
/// Condition reason: activation gave up.
pub const REASON_TIMED_OUT: &str = "TimedOut";
/// Condition reason: waiting for instances while requests are buffered.
pub const REASON_QUEUED: &str = "Queued";

/// Where a revision's public endpoints point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SksMode {
    /// Straight to the instances.
    Serve,
    /// Through the activator.
    Proxy,
}

impl fmt::Display for SksMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SksMode::Serve => "Serve",
            SksMode::Proxy => "Proxy",
        })
    }
}

/// The PodAutoscaler's `Active` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Unknown: instances are being brought up (also a new PA).
    Activating,
    /// True: serving with enough ready instances.
    Active,
    /// False: scaled (or scaling) to zero.
    Inactive,
}

/// What the reconciler keeps about one PodAutoscaler between reconciles.
#[derive(Debug, Clone, PartialEq)]
pub struct PaState {
    pub activity: Activity,
    /// Last transition of the `Active` condition (status, reason or message changed).
    pub activity_since: Instant,
    pub reason: &'static str,
    pub message: &'static str,
    /// `ScaleTargetInitialized`: the first time enough instances were ready.
    pub scale_target_initialized: bool,
    /// `status.desiredScale` (`None` until set; -1 = unknown).
    pub desired_scale: Option<i32>,
    /// `status.actualScale`: ready instances.
    pub actual_scale: Option<i32>,
}

impl PaState {
    /// A new PodAutoscaler at `now`: `Active` unknown, not initialized.
    pub fn new(now: Instant) -> Self {
        Self {
            activity: Activity::Activating,
            activity_since: now,
            reason: "",
            message: "",
            scale_target_initialized: false,
            desired_scale: None,
            actual_scale: None,
        }
    }

    fn set_activity(
        &mut self,
        a: Activity,
        reason: &'static str,
        message: &'static str,
        now: Instant,
    ) {
        // Same status, reason and message: not a transition.
        if (self.activity, self.reason, self.message) != (a, reason, message) {
            self.activity = a;
            self.reason = reason;
            self.message = message;
            self.activity_since = now;
        }
    }

    fn time_in(&self, a: Activity, now: Instant) -> Option<Duration> {
        (self.activity == a).then(|| now.saturating_duration_since(self.activity_since))
    }
}

/// Per-revision settings the reconciler applies with.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingParams {
    pub min_scale: i32,
    /// 0 = no upper bound.
    pub max_scale: i32,
    pub initial_scale: i32,
    pub reachable: bool,
    pub enable_scale_to_zero: bool,
    pub stable_window: Duration,
    pub scale_to_zero_grace_period: Duration,
    pub scale_to_zero_pod_retention_period: Duration,
    pub target_burst_capacity: f64,
    pub total_value: f64,
    pub activator_capacity: f64,
    /// How long an activation may hang before a desired 0 is accepted (progress deadline
    /// plus 30 s).
    pub activation_timeout: Duration,
}

impl ScalingParams {
    /// Settings from a revision's resolved scaling, its decider spec, the cluster config and
    /// the progress deadline (config-deployment's 600 s unless the revision says otherwise).
    pub fn new(
        scaling: &RevisionScaling,
        spec: &DeciderSpec,
        cfg: &AutoscalerConfig,
        progress_deadline: Duration,
    ) -> Self {
        Self {
            min_scale: scaling.min_scale,
            max_scale: scaling.max_scale,
            initial_scale: scaling.initial_scale,
            reachable: spec.reachable,
            enable_scale_to_zero: cfg.enable_scale_to_zero,
            stable_window: scaling.window,
            scale_to_zero_grace_period: cfg.scale_to_zero_grace_period,
            scale_to_zero_pod_retention_period: scaling.scale_to_zero_pod_retention_period,
            target_burst_capacity: scaling.target_burst_capacity,
            total_value: spec.total_value,
            activator_capacity: spec.activator_capacity,
            activation_timeout: progress_deadline + ACTIVATION_TIMEOUT_BUFFER,
        }
    }

    /// `(min, max)`: min is ignored when unreachable; until initialized (and reachable) min is
    /// raised to an initial scale above 1.
    pub fn bounds(&self, initialized: bool) -> (i32, i32) {
        let mut min = if self.reachable { self.min_scale } else { 0 };
        if self.initial_scale > 1 && !initialized && self.reachable {
            min = min.max(self.initial_scale);
        }
        (min, self.max_scale)
    }

    /// Ready instances needed to count as active: max(min, initial) until initialized, then
    /// max(min, 1).
    pub fn min_ready(&self, initialized: bool) -> i32 {
        let min = if self.reachable { self.min_scale } else { 0 };
        if initialized {
            min.max(1)
        } else {
            min.max(self.initial_scale)
        }
    }
}

/// What the reconciler sees at one reconcile.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub now: Instant,
    /// The decider's desired scale (-1 before its first valid tick).
    pub desired: i32,
    /// The decider's excess burst capacity.
    pub excess_burst_capacity: i32,
    /// The workload's replica count (`None` is read as 1, as for an unset Deployment).
    pub replicas: Option<i32>,
    /// Ready instances.
    pub ready: i32,
    /// Since when the SKS has had the activator in the path (`None` when it has not).
    pub proxy_since: Option<Instant>,
    /// Current SKS mode.
    pub sks_mode: SksMode,
    /// Result of probing the revision's public endpoint for the activator, when the caller has
    /// one; [`Outcome::probe_activator`] asks for it.
    pub activator_probe: Option<bool>,
}

/// What to do after a reconcile.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The scale the PA wants (-1 = unknown); reported as `status.desiredScale`.
    pub want: i32,
    /// New replica count for the workload, when it must change.
    pub scale_to: Option<i32>,
    /// SKS mode: Serve iff want > 0 and EBC ≥ 0.
    pub mode: SksMode,
    /// Activators to spread the revision over.
    pub num_activators: i32,
    /// Reconcile again after this long.
    pub requeue_after: Option<Duration>,
    /// Probe whether the activator is in the path, then reconcile again.
    pub probe_activator: bool,
}

/// One reconcile of a PodAutoscaler: updates `pa` and says what to do.
pub fn reconcile(params: &ScalingParams, pa: &mut PaState, obs: &Observed) -> Outcome {
    let mut out = Outcome {
        want: obs.desired,
        scale_to: None,
        mode: SksMode::Proxy,
        num_activators: num_activators(
            obs.ready,
            params.target_burst_capacity,
            params.total_value,
            params.activator_capacity,
        ),
        requeue_after: None,
        probe_activator: false,
    };

    if obs.desired >= 0 || pa.activity == Activity::Activating {
        let (min, max) = params.bounds(pa.scale_target_initialized);
        let mut desired = obs.desired;
        if desired < min {
            desired = min;
        }
        if max != 0 && desired > max {
            desired = max;
        }
        let (want, apply) = scale_to_zero_gate(params, pa, obs, desired, &mut out);
        out.want = want;
        if apply {
            let current = obs.replicas.unwrap_or(1);
            if want != current {
                out.scale_to = Some(want);
            }
        }
    }

    if out.want > 0 && obs.excess_burst_capacity >= 0 {
        out.mode = SksMode::Serve;
    }
    update_status(params, pa, obs, out.want);
    out
}

/// The scale-to-zero gates; returns `(want, apply)`.
fn scale_to_zero_gate(
    params: &ScalingParams,
    pa: &PaState,
    obs: &Observed,
    desired: i32,
    out: &mut Outcome,
) -> (i32, bool) {
    if desired != 0 {
        return (desired, true);
    }
    if !params.enable_scale_to_zero {
        return (1, true);
    }
    let now = obs.now;
    match pa.activity {
        Activity::Activating => {
            let stuck = now.saturating_duration_since(pa.activity_since);
            if stuck > params.activation_timeout {
                return (0, true);
            }
            out.requeue_after = Some(params.activation_timeout);
            (-1, false)
        }
        Activity::Active => {
            let active_for = now.saturating_duration_since(pa.activity_since);
            if active_for >= params.stable_window {
                // Report 0 without applying: the PA goes Inactive, the SKS to Proxy, and a
                // later reconcile scales to zero once the activator is confirmed in the path.
                if obs.sks_mode == SksMode::Proxy {
                    out.requeue_after = Some(PROXY_REQUEUE);
                }
                return (0, false);
            }
            out.requeue_after = Some(params.stable_window - active_for);
            (1, true)
        }
        Activity::Inactive => {
            let confirmed = if params.target_burst_capacity == -1.0 {
                true
            } else {
                obs.activator_probe == Some(true)
            };
            if !confirmed {
                out.probe_activator = true;
                out.requeue_after = Some(PROBE_REQUEUE);
                return (0, false);
            }
            let retention = if params.reachable {
                params.scale_to_zero_pod_retention_period
            } else {
                Duration::ZERO
            };
            let inactive_for = pa.time_in(Activity::Inactive, now).unwrap_or_default();
            if inactive_for >= params.scale_to_zero_grace_period.max(retention) {
                return (0, true);
            }
            if !retention.is_zero() && inactive_for < retention {
                out.requeue_after = Some(retention - inactive_for);
                return (0, false);
            }
            let proxy_for = obs
                .proxy_since
                .map(|t| now.saturating_duration_since(t))
                .unwrap_or_default();
            if proxy_for >= params.scale_to_zero_grace_period {
                // Fast path: the activator has been in the path for the whole grace period.
                return (0, true);
            }
            out.requeue_after = Some(params.scale_to_zero_grace_period - proxy_for);
            (0, false)
        }
    }
}

/// Status after a reconcile: desired/actual scale, initialization and the `Active` condition.
fn update_status(params: &ScalingParams, pa: &mut PaState, obs: &Observed, want: i32) {
    pa.actual_scale = Some(obs.ready);
    // An unknown want does not overwrite a known desired scale.
    if !(want == -1 && pa.desired_scale.is_some_and(|d| d >= 0)) {
        pa.desired_scale = Some(want);
    }
    let min_ready = params.min_ready(pa.scale_target_initialized);
    if obs.ready >= min_ready {
        pa.scale_target_initialized = true;
    }
    let now = obs.now;
    if want == 0 || min_ready == 0 {
        if pa.activity == Activity::Activating && min_ready > 0 {
            pa.set_activity(
                Activity::Inactive,
                REASON_TIMED_OUT,
                "The target could not be activated.",
                now,
            );
        } else {
            pa.set_activity(
                Activity::Inactive,
                REASON_NO_TRAFFIC,
                "The target is not receiving traffic.",
                now,
            );
        }
    } else if obs.ready < min_ready {
        if want > 0 || pa.activity != Activity::Inactive {
            pa.set_activity(
                Activity::Activating,
                REASON_QUEUED,
                "Requests to the target are being buffered as resources are provisioned.",
                now,
            );
        } else {
            pa.set_activity(
                Activity::Inactive,
                REASON_NO_TRAFFIC,
                "The target is not receiving traffic.",
                now,
            );
        }
    } else if want > 0 || pa.activity != Activity::Inactive {
        pa.set_activity(Activity::Active, "", "", now);
    }
}

/// Activators to spread a revision over: 2 when TBC is 0, else enough to hold the ready
/// capacity plus the burst, at least 2.
pub fn num_activators(ready: i32, tbc: f64, total_value: f64, activator_capacity: f64) -> i32 {
    if tbc == 0.0 {
        return MIN_ACTIVATORS;
    }
    let mut cover = f64::from(ready) * total_value;
    if tbc > 0.0 {
        cover += tbc;
    }
    ((cover / activator_capacity).ceil() as i32).max(MIN_ACTIVATORS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> ScalingParams {
        let cfg = AutoscalerConfig::default();
        let scaling = RevisionScaling::from_annotations(&Default::default(), &cfg);
        let spec = DeciderSpec::new(&scaling, 0, &cfg, true);
        ScalingParams::new(&scaling, &spec, &cfg, Duration::from_secs(600))
    }

    fn obs(now: Instant, desired: i32, ebc: i32, replicas: i32, ready: i32) -> Observed {
        Observed {
            now,
            desired,
            excess_burst_capacity: ebc,
            replicas: Some(replicas),
            ready,
            proxy_since: None,
            sks_mode: SksMode::Serve,
            activator_probe: Some(true),
        }
    }

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn bounds_clamp_and_min_ignored_when_unreachable() {
        let t0 = Instant::now();
        let p = ScalingParams {
            min_scale: 2,
            max_scale: 5,
            ..params()
        };
        let mut pa = PaState::new(t0);
        pa.scale_target_initialized = true;
        let o = reconcile(&p, &mut pa, &obs(t0, 9, 0, 3, 3));
        assert_eq!((o.want, o.scale_to), (5, Some(5)));
        let o = reconcile(&p, &mut pa, &obs(t0, 1, 0, 5, 5));
        assert_eq!((o.want, o.scale_to), (2, Some(2)));
        // Unreachable: min does not apply, so 0 goes through the scale-to-zero gates.
        let unreachable = ScalingParams {
            reachable: false,
            ..p.clone()
        };
        assert_eq!(unreachable.bounds(true), (0, 5));
        assert_eq!(p.bounds(true), (2, 5));
    }

    #[test]
    fn initial_scale_raises_min_until_initialized() {
        let p = ScalingParams {
            initial_scale: 3,
            ..params()
        };
        assert_eq!(p.bounds(false), (3, 0));
        assert_eq!(p.bounds(true), (0, 0));
        assert_eq!(p.min_ready(false), 3);
        assert_eq!(p.min_ready(true), 1);
        let t0 = Instant::now();
        let mut pa = PaState::new(t0);
        let o = reconcile(&p, &mut pa, &obs(t0, 1, -1, 3, 2));
        assert_eq!(o.want, 3);
        assert_eq!(pa.activity, Activity::Activating);
        assert!(!pa.scale_target_initialized);
        let o = reconcile(&p, &mut pa, &obs(secs(t0, 2), 1, -1, 3, 3));
        assert_eq!(o.want, 3);
        assert!(pa.scale_target_initialized);
        assert_eq!(pa.activity, Activity::Active);
        // Initialized: min falls back to 0 and the decider's 1 applies.
        let o = reconcile(&p, &mut pa, &obs(secs(t0, 4), 1, -1, 3, 3));
        assert_eq!((o.want, o.scale_to), (1, Some(1)));
    }

    #[test]
    fn unknown_desired_does_nothing_unless_activating() {
        let t0 = Instant::now();
        let p = params();
        let mut pa = PaState::new(t0);
        pa.activity = Activity::Active;
        pa.desired_scale = Some(2);
        let o = reconcile(&p, &mut pa, &obs(t0, -1, -111, 2, 2));
        assert_eq!((o.want, o.scale_to, o.mode), (-1, None, SksMode::Proxy));
        // The known desired scale is kept.
        assert_eq!(pa.desired_scale, Some(2));
        // A new (activating) PA with -1: clamped to 0, held by the activation gate.
        let mut pa = PaState::new(t0);
        let o = reconcile(&p, &mut pa, &obs(t0, -1, -111, 1, 0));
        assert_eq!(o.want, -1);
        assert_eq!(o.scale_to, None);
        assert_eq!(o.requeue_after, Some(Duration::from_secs(630)));
    }

    #[test]
    fn scale_to_zero_disabled_keeps_one() {
        let t0 = Instant::now();
        let p = ScalingParams {
            enable_scale_to_zero: false,
            ..params()
        };
        let mut pa = PaState::new(t0);
        pa.activity = Activity::Active;
        let o = reconcile(&p, &mut pa, &obs(secs(t0, 100), 0, 0, 3, 3));
        assert_eq!((o.want, o.scale_to), (1, Some(1)));
        assert_eq!(pa.activity, Activity::Active);
    }

    #[test]
    fn activating_gives_up_only_after_the_timeout() {
        let t0 = Instant::now();
        let p = params();
        let mut pa = PaState::new(t0);
        let o = reconcile(&p, &mut pa, &obs(secs(t0, 630), 0, -111, 1, 0));
        assert_eq!((o.want, o.scale_to), (-1, None));
        // Strictly more than 600 + 30 s.
        let mut pa = PaState::new(t0);
        let o = reconcile(&p, &mut pa, &obs(secs(t0, 631), 0, -111, 1, 0));
        assert_eq!((o.want, o.scale_to), (0, Some(0)));
        assert_eq!(pa.activity, Activity::Inactive);
        assert_eq!(pa.reason, REASON_TIMED_OUT);
    }

    #[test]
    fn active_must_last_a_stable_window_before_zero() {
        let t0 = Instant::now();
        let p = params();
        let mut pa = PaState::new(t0);
        pa.activity = Activity::Active;
        // Active for 40 s of the 60 s window: keep 1, requeue for the remaining 20 s.
        let o = reconcile(&p, &mut pa, &obs(secs(t0, 40), 0, -111, 1, 1));
        assert_eq!((o.want, o.scale_to), (1, None));
        assert_eq!(o.requeue_after, Some(Duration::from_secs(20)));
        assert_eq!(pa.activity, Activity::Active);
        // At 60 s: want 0 reported, not applied; the PA turns Inactive; SKS to Proxy.
        let o = reconcile(&p, &mut pa, &obs(secs(t0, 60), 0, -111, 1, 1));
        assert_eq!((o.want, o.scale_to, o.mode), (0, None, SksMode::Proxy));
        assert_eq!(pa.activity, Activity::Inactive);
        assert_eq!(pa.reason, REASON_NO_TRAFFIC);
        assert_eq!(pa.activity_since, secs(t0, 60));
        assert_eq!(pa.desired_scale, Some(0));
    }

    #[test]
    fn inactive_waits_for_activator_grace_and_retention() {
        // Offset so that times before t0 exist.
        let t0 = Instant::now() + Duration::from_secs(1000);
        let p = params();
        let inactive = || {
            let mut pa = PaState::new(t0);
            pa.activity = Activity::Inactive;
            pa.reason = REASON_NO_TRAFFIC;
            pa.message = "The target is not receiving traffic.";
            pa
        };
        // No confirmation that the activator is in the path: probe, requeue, keep instances.
        let mut pa = inactive();
        let mut o1 = obs(secs(t0, 5), 0, -111, 1, 1);
        o1.activator_probe = None;
        let o = reconcile(&p, &mut pa, &o1);
        assert!(o.probe_activator);
        assert_eq!((o.want, o.scale_to), (0, None));
        // Confirmed, inactive 5 s, SKS in Proxy for only 10 s: wait the rest of the 30 s grace.
        let mut pa = inactive();
        let mut o2 = obs(secs(t0, 5), 0, -111, 1, 1);
        o2.sks_mode = SksMode::Proxy;
        o2.proxy_since = Some(t0 - Duration::from_secs(5));
        let o = reconcile(&p, &mut pa, &o2);
        assert_eq!((o.want, o.scale_to), (0, None));
        assert_eq!(o.requeue_after, Some(Duration::from_secs(20)));
        // Proxy for the whole grace period: fast path to zero.
        let mut pa = inactive();
        o2.proxy_since = Some(t0 - Duration::from_secs(25));
        let o = reconcile(&p, &mut pa, &o2);
        assert_eq!((o.want, o.scale_to), (0, Some(0)));
        // Inactive for the grace period itself: zero whatever the SKS.
        let mut pa = inactive();
        let o = reconcile(&p, &mut pa, &obs(secs(t0, 30), 0, -111, 1, 1));
        assert_eq!(o.scale_to, Some(0));
        // Retention 90 s: wait it out even with the activator long in the path.
        let r = ScalingParams {
            scale_to_zero_pod_retention_period: Duration::from_secs(90),
            ..params()
        };
        let mut pa = inactive();
        let o = reconcile(&r, &mut pa, &o2);
        assert_eq!(o.scale_to, None);
        assert_eq!(o.requeue_after, Some(Duration::from_secs(85)));
        let mut pa = inactive();
        let o = reconcile(&r, &mut pa, &obs(secs(t0, 90), 0, -111, 1, 1));
        assert_eq!(o.scale_to, Some(0));
        // TBC -1: no probe needed.
        let unlimited = ScalingParams {
            target_burst_capacity: -1.0,
            ..params()
        };
        let mut pa = inactive();
        let mut o3 = obs(secs(t0, 30), 0, -1, 1, 1);
        o3.activator_probe = None;
        assert_eq!(reconcile(&unlimited, &mut pa, &o3).scale_to, Some(0));
    }

    #[test]
    fn sks_mode_serve_only_with_capacity() {
        let t0 = Instant::now();
        let p = params();
        let mut pa = PaState::new(t0);
        pa.activity = Activity::Active;
        pa.scale_target_initialized = true;
        assert_eq!(
            reconcile(&p, &mut pa, &obs(t0, 3, 0, 3, 3)).mode,
            SksMode::Serve
        );
        assert_eq!(
            reconcile(&p, &mut pa, &obs(t0, 3, -1, 3, 3)).mode,
            SksMode::Proxy
        );
        assert_eq!(
            reconcile(&p, &mut pa, &obs(t0, 1, 89, 1, 1)).mode,
            SksMode::Serve
        );
    }

    #[test]
    fn waking_from_zero_goes_activating_then_active() {
        let t0 = Instant::now();
        let p = params();
        let mut pa = PaState::new(t0);
        pa.activity = Activity::Inactive;
        pa.scale_target_initialized = true;
        let o = reconcile(&p, &mut pa, &obs(secs(t0, 1), 1, -211, 0, 0));
        assert_eq!((o.want, o.scale_to, o.mode), (1, Some(1), SksMode::Proxy));
        assert_eq!(pa.activity, Activity::Activating);
        assert_eq!(pa.reason, REASON_QUEUED);
        let o = reconcile(&p, &mut pa, &obs(secs(t0, 3), 1, -111, 1, 1));
        assert_eq!(o.scale_to, None);
        assert_eq!(pa.activity, Activity::Active);
        assert_eq!(pa.activity_since, secs(t0, 3));
    }

    #[test]
    fn activator_counts() {
        assert_eq!(num_activators(5, 0.0, 100.0, 100.0), 2);
        assert_eq!(num_activators(1, 211.0, 100.0, 100.0), 4);
        assert_eq!(num_activators(10, -1.0, 100.0, 100.0), 10);
        assert_eq!(num_activators(0, -1.0, 100.0, 100.0), 2);
    }
}

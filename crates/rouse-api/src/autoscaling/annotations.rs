//! The `autoscaling.knative.dev/*` annotations: keys (with legacy camelCase aliases), typed
//! parsing and validation with Knative's bounds and messages.
//!
//! [`validate`] is the webhook's check; [`RevisionScaling::from_annotations`] resolves what the
//! autoscaler actually uses (annotation when present and parseable, else `config-autoscaler`).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::autoscaler::{
    self as cfgmod, AutoscalerConfig, HPA_CLASS, KPA_CLASS, PANIC_THRESHOLD_PERCENTAGE_MAX,
    PANIC_THRESHOLD_PERCENTAGE_MIN, PANIC_WINDOW_PERCENTAGE_MAX, PANIC_WINDOW_PERCENTAGE_MIN,
    TARGET_MIN, WINDOW_MAX, WINDOW_MIN, go_float, go_parse_float, go_parse_i32,
    parse_go_duration_nanos,
};
use crate::error::{FieldError, FieldErrors};

/// Prefix of every autoscaling annotation.
pub const GROUP: &str = "autoscaling.knative.dev";

/// Autoscaler class: `kpa.autoscaling.knative.dev` or `hpa.autoscaling.knative.dev`.
pub const CLASS: &str = "autoscaling.knative.dev/class";
/// Scaling metric: `concurrency` or `rps` for the KPA.
pub const METRIC: &str = "autoscaling.knative.dev/metric";
/// Per-instance target of the metric.
pub const TARGET: &str = "autoscaling.knative.dev/target";
/// Percentage of the target to aim for.
pub const TARGET_UTILIZATION_PERCENTAGE: &str =
    "autoscaling.knative.dev/target-utilization-percentage";
/// Lower bound on instances.
pub const MIN_SCALE: &str = "autoscaling.knative.dev/min-scale";
/// Upper bound on instances (0 = none).
pub const MAX_SCALE: &str = "autoscaling.knative.dev/max-scale";
/// Instances a revision starts with.
pub const INITIAL_SCALE: &str = "autoscaling.knative.dev/initial-scale";
/// Smallest non-zero scale when scaling up from zero.
pub const ACTIVATION_SCALE: &str = "autoscaling.knative.dev/activation-scale";
/// How long scale-downs are held back.
pub const SCALE_DOWN_DELAY: &str = "autoscaling.knative.dev/scale-down-delay";
/// The stable window.
pub const WINDOW: &str = "autoscaling.knative.dev/window";
/// Panic window as a percentage of the stable window.
pub const PANIC_WINDOW_PERCENTAGE: &str = "autoscaling.knative.dev/panic-window-percentage";
/// Panic threshold as a percentage of current capacity.
pub const PANIC_THRESHOLD_PERCENTAGE: &str = "autoscaling.knative.dev/panic-threshold-percentage";
/// Target burst capacity (-1 = activator always in path).
pub const TARGET_BURST_CAPACITY: &str = "autoscaling.knative.dev/target-burst-capacity";
/// Minimum time the last instance is kept after deciding to scale to zero.
pub const SCALE_TO_ZERO_POD_RETENTION_PERIOD: &str =
    "autoscaling.knative.dev/scale-to-zero-pod-retention-period";
/// Window averaging: `linear` or `weighted-exponential`.
pub const METRIC_AGGREGATION_ALGORITHM: &str =
    "autoscaling.knative.dev/metric-aggregation-algorithm";

/// Legacy alias of [`MIN_SCALE`].
pub const MIN_SCALE_LEGACY: &str = "autoscaling.knative.dev/minScale";
/// Legacy alias of [`MAX_SCALE`].
pub const MAX_SCALE_LEGACY: &str = "autoscaling.knative.dev/maxScale";
/// Legacy alias of [`INITIAL_SCALE`].
pub const INITIAL_SCALE_LEGACY: &str = "autoscaling.knative.dev/initialScale";
/// Legacy alias of [`PANIC_THRESHOLD_PERCENTAGE`].
pub const PANIC_THRESHOLD_PERCENTAGE_LEGACY: &str =
    "autoscaling.knative.dev/panicThresholdPercentage";
/// Legacy alias of [`PANIC_WINDOW_PERCENTAGE`].
pub const PANIC_WINDOW_PERCENTAGE_LEGACY: &str = "autoscaling.knative.dev/panicWindowPercentage";
/// Legacy alias of [`SCALE_DOWN_DELAY`].
pub const SCALE_DOWN_DELAY_LEGACY: &str = "autoscaling.knative.dev/scaleDownDelay";
/// Legacy alias of [`SCALE_TO_ZERO_POD_RETENTION_PERIOD`].
pub const SCALE_TO_ZERO_POD_RETENTION_PERIOD_LEGACY: &str =
    "autoscaling.knative.dev/scaleToZeroPodRetentionPeriod";
/// Legacy alias of [`TARGET_BURST_CAPACITY`].
pub const TARGET_BURST_CAPACITY_LEGACY: &str = "autoscaling.knative.dev/targetBurstCapacity";
/// Legacy alias of [`TARGET_UTILIZATION_PERCENTAGE`].
pub const TARGET_UTILIZATION_PERCENTAGE_LEGACY: &str =
    "autoscaling.knative.dev/targetUtilizationPercentage";
/// Legacy alias of [`METRIC_AGGREGATION_ALGORITHM`].
pub const METRIC_AGGREGATION_ALGORITHM_LEGACY: &str =
    "autoscaling.knative.dev/metricAggregationAlgorithm";

/// Lookup orders: the canonical key first, then its legacy alias.
pub mod keys {
    use super::*;
    pub const CLASS_KEYS: &[&str] = &[CLASS];
    pub const METRIC_KEYS: &[&str] = &[METRIC];
    pub const TARGET_KEYS: &[&str] = &[TARGET];
    pub const TARGET_UTILIZATION_PERCENTAGE_KEYS: &[&str] = &[
        TARGET_UTILIZATION_PERCENTAGE,
        TARGET_UTILIZATION_PERCENTAGE_LEGACY,
    ];
    pub const MIN_SCALE_KEYS: &[&str] = &[MIN_SCALE, MIN_SCALE_LEGACY];
    pub const MAX_SCALE_KEYS: &[&str] = &[MAX_SCALE, MAX_SCALE_LEGACY];
    pub const INITIAL_SCALE_KEYS: &[&str] = &[INITIAL_SCALE, INITIAL_SCALE_LEGACY];
    pub const ACTIVATION_SCALE_KEYS: &[&str] = &[ACTIVATION_SCALE];
    pub const SCALE_DOWN_DELAY_KEYS: &[&str] = &[SCALE_DOWN_DELAY, SCALE_DOWN_DELAY_LEGACY];
    pub const WINDOW_KEYS: &[&str] = &[WINDOW];
    pub const PANIC_WINDOW_PERCENTAGE_KEYS: &[&str] =
        &[PANIC_WINDOW_PERCENTAGE, PANIC_WINDOW_PERCENTAGE_LEGACY];
    pub const PANIC_THRESHOLD_PERCENTAGE_KEYS: &[&str] = &[
        PANIC_THRESHOLD_PERCENTAGE,
        PANIC_THRESHOLD_PERCENTAGE_LEGACY,
    ];
    pub const TARGET_BURST_CAPACITY_KEYS: &[&str] =
        &[TARGET_BURST_CAPACITY, TARGET_BURST_CAPACITY_LEGACY];
    pub const SCALE_TO_ZERO_POD_RETENTION_PERIOD_KEYS: &[&str] = &[
        SCALE_TO_ZERO_POD_RETENTION_PERIOD,
        SCALE_TO_ZERO_POD_RETENTION_PERIOD_LEGACY,
    ];
    pub const METRIC_AGGREGATION_ALGORITHM_KEYS: &[&str] = &[
        METRIC_AGGREGATION_ALGORITHM,
        METRIC_AGGREGATION_ALGORITHM_LEGACY,
    ];
}
use keys::*;

/// Every autoscaling annotation key Knative knows, canonical and legacy.
pub const KNOWN_KEYS: &[&str] = &[
    CLASS,
    METRIC,
    TARGET,
    TARGET_UTILIZATION_PERCENTAGE,
    MIN_SCALE,
    MAX_SCALE,
    INITIAL_SCALE,
    ACTIVATION_SCALE,
    SCALE_DOWN_DELAY,
    WINDOW,
    PANIC_WINDOW_PERCENTAGE,
    PANIC_THRESHOLD_PERCENTAGE,
    TARGET_BURST_CAPACITY,
    SCALE_TO_ZERO_POD_RETENTION_PERIOD,
    METRIC_AGGREGATION_ALGORITHM,
    MIN_SCALE_LEGACY,
    MAX_SCALE_LEGACY,
    INITIAL_SCALE_LEGACY,
    PANIC_THRESHOLD_PERCENTAGE_LEGACY,
    PANIC_WINDOW_PERCENTAGE_LEGACY,
    SCALE_DOWN_DELAY_LEGACY,
    SCALE_TO_ZERO_POD_RETENTION_PERIOD_LEGACY,
    TARGET_BURST_CAPACITY_LEGACY,
    TARGET_UTILIZATION_PERCENTAGE_LEGACY,
    METRIC_AGGREGATION_ALGORITHM_LEGACY,
];

/// The `concurrency` metric (KPA default).
pub const METRIC_CONCURRENCY: &str = "concurrency";
/// The `rps` metric.
pub const METRIC_RPS: &str = "rps";
/// The `cpu` metric (HPA default).
pub const METRIC_CPU: &str = "cpu";
/// The `memory` metric (HPA).
pub const METRIC_MEMORY: &str = "memory";
/// `metric-aggregation-algorithm` values.
pub const ALGORITHM_LINEAR: &str = "linear";
/// `metric-aggregation-algorithm` values.
pub const ALGORITHM_WEIGHTED_EXPONENTIAL: &str = "weighted-exponential";
/// `metric-aggregation-algorithm` values (alternative spelling).
pub const ALGORITHM_WEIGHTED_EXPONENTIAL_ALT: &str = "weightedExponential";

/// Looks a value up by priority: the first of `keys` present wins. Returns the key found.
pub fn get<'a>(a: &'a BTreeMap<String, String>, keys: &[&str]) -> Option<(&'a str, &'a str)> {
    keys.iter()
        .find_map(|k| a.get_key_value(*k))
        .map(|(k, v)| (k.as_str(), v.as_str()))
}

/// True for any key in [`KNOWN_KEYS`].
pub fn is_known(key: &str) -> bool {
    KNOWN_KEYS.contains(&key)
}

/// How window averages are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AggregationAlgorithm {
    /// Plain average over the valid part of the window (Knative's default).
    #[default]
    Linear,
    /// Exponentially weighted towards recent seconds.
    WeightedExponential,
}

/// The scaling settings of one revision: each annotation resolved against `config-autoscaler`
/// the way Knative's PodAutoscaler does (annotation if present and parseable, else config).
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionScaling {
    /// Autoscaler class (annotation or `pod-autoscaler-class`).
    pub class: String,
    /// Metric name: annotation, else `concurrency` for the KPA, `cpu` for the HPA.
    pub metric: String,
    /// The `target` annotation, when set.
    pub target: Option<f64>,
    /// The `target-utilization-percentage` annotation as a fraction, when set.
    pub target_utilization: Option<f64>,
    /// Lower bound (annotation or `min-scale`); the caller ignores it when unreachable.
    pub min_scale: i32,
    /// Upper bound, 0 = none.
    pub max_scale: i32,
    /// Initial scale (annotation unless it is 0 and zero is not allowed, else config).
    pub initial_scale: i32,
    /// `activation-scale`, 0 when unset.
    pub activation_scale: i32,
    pub scale_down_delay: Duration,
    /// The stable window.
    pub window: Duration,
    pub panic_window_percentage: f64,
    pub panic_threshold_percentage: f64,
    pub target_burst_capacity: f64,
    pub scale_to_zero_pod_retention_period: Duration,
    pub metric_aggregation_algorithm: AggregationAlgorithm,
}

impl RevisionScaling {
    /// Resolves the settings from a revision's annotations and the cluster config.
    pub fn from_annotations(a: &BTreeMap<String, String>, cfg: &AutoscalerConfig) -> Self {
        let class = get(a, CLASS_KEYS)
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| cfg.pod_autoscaler_class.clone());
        let metric = match get(a, METRIC_KEYS) {
            Some((_, v)) => v.to_string(),
            None => match class.as_str() {
                KPA_CLASS => METRIC_CONCURRENCY.to_string(),
                HPA_CLASS => METRIC_CPU.to_string(),
                _ => String::new(),
            },
        };
        let initial_scale = match int(a, INITIAL_SCALE_KEYS) {
            Some(v) if v != 0 || cfg.allow_zero_initial_scale => v,
            _ => cfg.initial_scale,
        };
        let algorithm = match get(a, METRIC_AGGREGATION_ALGORITHM_KEYS) {
            Some((_, ALGORITHM_WEIGHTED_EXPONENTIAL | ALGORITHM_WEIGHTED_EXPONENTIAL_ALT)) => {
                AggregationAlgorithm::WeightedExponential
            }
            _ => AggregationAlgorithm::Linear,
        };
        Self {
            class,
            metric,
            target: float(a, TARGET_KEYS),
            target_utilization: float(a, TARGET_UTILIZATION_PERCENTAGE_KEYS).map(|v| v / 100.0),
            min_scale: int(a, MIN_SCALE_KEYS).unwrap_or(cfg.min_scale),
            max_scale: int(a, MAX_SCALE_KEYS).unwrap_or(cfg.max_scale),
            initial_scale,
            activation_scale: int(a, ACTIVATION_SCALE_KEYS).unwrap_or(0),
            scale_down_delay: duration(a, SCALE_DOWN_DELAY_KEYS).unwrap_or(cfg.scale_down_delay),
            window: duration(a, WINDOW_KEYS).unwrap_or(cfg.stable_window),
            panic_window_percentage: float(a, PANIC_WINDOW_PERCENTAGE_KEYS)
                .unwrap_or(cfg.panic_window_percentage),
            panic_threshold_percentage: float(a, PANIC_THRESHOLD_PERCENTAGE_KEYS)
                .unwrap_or(cfg.panic_threshold_percentage),
            target_burst_capacity: float(a, TARGET_BURST_CAPACITY_KEYS)
                .unwrap_or(cfg.target_burst_capacity),
            scale_to_zero_pod_retention_period: duration(
                a,
                SCALE_TO_ZERO_POD_RETENTION_PERIOD_KEYS,
            )
            .unwrap_or(cfg.scale_to_zero_pod_retention_period),
            metric_aggregation_algorithm: algorithm,
        }
    }

    /// True when the KPA scales this revision.
    pub fn is_kpa(&self) -> bool {
        self.class == KPA_CLASS
    }

    /// True when scaling on requests per second rather than concurrency.
    pub fn is_rps(&self) -> bool {
        self.metric == METRIC_RPS
    }

    /// The panic window: a percentage of the stable window, whole seconds, at least 1 s.
    pub fn panic_window(&self) -> Duration {
        cfgmod::panic_window(self.window, self.panic_window_percentage)
    }

    /// Panic threshold as a ratio (200 % → 2.0).
    pub fn panic_threshold(&self) -> f64 {
        self.panic_threshold_percentage / 100.0
    }

    /// `(target, total)` per instance, as Knative resolves them: total is the most one
    /// instance may take (containerConcurrency, or the config default when it is 0, or the
    /// `target` annotation capped at containerConcurrency); target = max(0.01, total ×
    /// utilization).
    pub fn metric_target(&self, container_concurrency: i64, cfg: &AutoscalerConfig) -> (f64, f64) {
        let (mut total, mut tu) = if self.is_rps() {
            (cfg.rps_target_default, cfgmod::RPS_TARGET_UTILIZATION)
        } else {
            let cc = container_concurrency as f64;
            let total = if cc == 0.0 {
                cfg.container_concurrency_target_default
            } else {
                cc
            };
            (total, cfg.container_concurrency_target_percentage)
        };
        if let Some(t) = self.target {
            total = t;
            if self.metric == METRIC_CONCURRENCY && container_concurrency != 0 {
                total = t.min(container_concurrency as f64);
            }
        }
        if let Some(u) = self.target_utilization {
            tu = u;
        }
        (TARGET_MIN.max(total * tu), total)
    }
}

fn int(a: &BTreeMap<String, String>, keys: &[&str]) -> Option<i32> {
    get(a, keys).and_then(|(_, v)| go_parse_i32(v).ok())
}

fn float(a: &BTreeMap<String, String>, keys: &[&str]) -> Option<f64> {
    get(a, keys).and_then(|(_, v)| go_parse_float(v))
}

fn duration(a: &BTreeMap<String, String>, keys: &[&str]) -> Option<Duration> {
    get(a, keys)
        .and_then(|(_, v)| parse_go_duration_nanos(v).ok())
        .map(|n| Duration::from_nanos(n.clamp(0, i128::from(u64::MAX)) as u64))
}

/// Validates the autoscaling annotations of a revision template against the config's bounds.
/// Paths are relative to the annotations map (e.g. `autoscaling.knative.dev/min-scale`); the
/// caller prefixes them with `metadata.annotations`. Unknown keys are not errors (Knative
/// lets them through).
pub fn validate(annotations: &BTreeMap<String, String>, config: &AutoscalerConfig) -> FieldErrors {
    let mut errs = FieldErrors::new();
    validate_class(annotations, &mut errs);
    validate_min_max_scale(annotations, config, &mut errs);
    validate_floats(annotations, &mut errs);
    validate_window(annotations, &mut errs);
    validate_duration_bounded(
        annotations,
        SCALE_TO_ZERO_POD_RETENTION_PERIOD_KEYS,
        false,
        &mut errs,
    );
    validate_duration_bounded(annotations, SCALE_DOWN_DELAY_KEYS, true, &mut errs);
    validate_metric(annotations, config, &mut errs);
    validate_algorithm(annotations, &mut errs);
    validate_initial_scale(annotations, config, &mut errs);
    errs
}

fn validate_class(a: &BTreeMap<String, String>, errs: &mut FieldErrors) {
    if let Some((k, v)) = get(a, CLASS_KEYS)
        && v.ends_with(".knative.dev")
        && v != KPA_CLASS
        && v != HPA_CLASS
    {
        errs.push(FieldError::invalid_value(v, k));
    }
}

/// An int32 ≥ 0 (Knative's min/max-scale parsing): `Ok(0)` when absent.
fn int_ge0(a: &BTreeMap<String, String>, keys: &[&str], errs: &mut FieldErrors) -> i32 {
    let Some((k, v)) = get(a, keys) else {
        return 0;
    };
    match go_parse_i32(v) {
        Ok(i) if i >= 0 => i,
        Ok(_) | Err("value out of range") => {
            errs.push(FieldError::out_of_bounds(v, 0, i32::MAX, k));
            0
        }
        Err(_) => {
            errs.push(FieldError::invalid_value(v, k));
            0
        }
    }
}

fn validate_min_max_scale(
    a: &BTreeMap<String, String>,
    config: &AutoscalerConfig,
    errs: &mut FieldErrors,
) {
    let min = int_ge0(a, MIN_SCALE_KEYS, errs);
    let max = int_ge0(a, MAX_SCALE_KEYS, errs);
    if max != 0 && max < min {
        errs.push(FieldError::new(
            format!("max-scale={max} is less than min-scale={min}"),
            &[MAX_SCALE, MIN_SCALE],
        ));
    }
    if let Some((k, _)) = get(a, MAX_SCALE_KEYS) {
        let limit = config.max_scale_limit;
        if limit != 0 {
            if max > limit {
                errs.push(FieldError::out_of_bounds(max, 1, limit, k));
            }
            if max == 0 {
                errs.push(FieldError::new(
                    format!("max-scale=0 (unlimited), must be less than {limit}"),
                    &[k],
                ));
            }
        }
    }
    if let Some((k, v)) = get(a, ACTIVATION_SCALE_KEYS) {
        match go_parse_i32(v) {
            Err(_) => errs.push(FieldError::invalid_value(v, k)),
            Ok(nz) if min > nz => errs.push(FieldError::new(
                format!("min-scale={min} is greater than activation-scale={nz}"),
                &[k],
            )),
            Ok(nz) if max < nz && max != 0 => errs.push(FieldError::new(
                format!("max-scale={max} is less than activation-scale={nz}"),
                &[k],
            )),
            Ok(nz) if nz < 2 => errs.push(FieldError::new(
                format!("activation-scale={nz} must be greater than 1"),
                &[k],
            )),
            Ok(_) => {}
        }
    }
}

fn validate_floats(a: &BTreeMap<String, String>, errs: &mut FieldErrors) {
    let ranged = |keys: &[&str], lo: f64, hi: f64, errs: &mut FieldErrors| {
        if let Some((k, v)) = get(a, keys) {
            match go_parse_float(v) {
                None => errs.push(FieldError::invalid_value(v, k)),
                Some(f) if f < lo || f > hi || f.is_nan() => {
                    errs.push(FieldError::out_of_bounds(v, go_float(lo), go_float(hi), k))
                }
                Some(_) => {}
            }
        }
    };
    ranged(
        PANIC_WINDOW_PERCENTAGE_KEYS,
        PANIC_WINDOW_PERCENTAGE_MIN,
        PANIC_WINDOW_PERCENTAGE_MAX,
        errs,
    );
    ranged(
        PANIC_THRESHOLD_PERCENTAGE_KEYS,
        PANIC_THRESHOLD_PERCENTAGE_MIN,
        PANIC_THRESHOLD_PERCENTAGE_MAX,
        errs,
    );
    if let Some((k, v)) = get(a, TARGET_KEYS) {
        match go_parse_float(v) {
            None => errs.push(FieldError::invalid_value(v, k)),
            Some(f) if f < TARGET_MIN || f.is_nan() => errs.push(FieldError::new(
                format!("target {v} should be at least {}", go_float(TARGET_MIN)),
                &[k],
            )),
            Some(_) => {}
        }
    }
    ranged(TARGET_UTILIZATION_PERCENTAGE_KEYS, 1.0, 100.0, errs);
    if let Some((k, v)) = get(a, TARGET_BURST_CAPACITY_KEYS) {
        match go_parse_float(v) {
            Some(f) if f >= 0.0 || f == -1.0 => {}
            _ => errs.push(FieldError::invalid_value(v, k)),
        }
    }
}

fn validate_window(a: &BTreeMap<String, String>, errs: &mut FieldErrors) {
    let Some((_, v)) = get(a, WINDOW_KEYS) else {
        return;
    };
    const SEC: i128 = 1_000_000_000;
    match parse_go_duration_nanos(v) {
        Err(_) => errs.push(FieldError::invalid_value(v, WINDOW)),
        Ok(d) if d < WINDOW_MIN.as_nanos() as i128 || d > WINDOW_MAX.as_nanos() as i128 => {
            errs.push(FieldError::out_of_bounds(v, "6s", "1h0m0s", WINDOW))
        }
        Ok(d) if d % SEC != 0 => errs.push(FieldError::new(
            "must be specified with at most second precision",
            &[WINDOW],
        )),
        Ok(_) => {}
    }
}

/// `scale-down-delay` and `scale-to-zero-pod-retention-period`: 0 to 1 h (the delay also in
/// whole seconds).
fn validate_duration_bounded(
    a: &BTreeMap<String, String>,
    keys: &[&str],
    whole_seconds: bool,
    errs: &mut FieldErrors,
) {
    let Some((k, v)) = get(a, keys) else {
        return;
    };
    match parse_go_duration_nanos(v) {
        Err(_) => errs.push(FieldError::invalid_value(v, k)),
        Ok(d) if d < 0 || d > WINDOW_MAX.as_nanos() as i128 => {
            errs.push(FieldError::out_of_bounds(v, "0s", "1h0m0s", k))
        }
        Ok(d) if whole_seconds && d % 1_000_000_000 != 0 => errs.push(FieldError::new(
            "must be specified with at most second precision",
            &[k],
        )),
        Ok(_) => {}
    }
}

fn validate_metric(
    a: &BTreeMap<String, String>,
    config: &AutoscalerConfig,
    errs: &mut FieldErrors,
) {
    let Some((_, metric)) = get(a, METRIC_KEYS) else {
        return;
    };
    let class = get(a, CLASS_KEYS)
        .map(|(_, v)| v)
        .unwrap_or(config.pod_autoscaler_class.as_str());
    let ok = match class {
        KPA_CLASS => metric == METRIC_CONCURRENCY || metric == METRIC_RPS,
        HPA_CLASS => !metric.is_empty(),
        // Other classes are left alone.
        _ => true,
    };
    if !ok {
        errs.push(FieldError::invalid_value(metric, METRIC));
    }
}

fn validate_algorithm(a: &BTreeMap<String, String>, errs: &mut FieldErrors) {
    // Only checked when the class is explicitly the KPA: custom autoscalers may have others.
    if get(a, CLASS_KEYS).map(|(_, v)| v) != Some(KPA_CLASS) {
        return;
    }
    if let Some((k, v)) = get(a, METRIC_AGGREGATION_ALGORITHM_KEYS)
        && !v.is_empty()
        && ![
            ALGORITHM_LINEAR,
            ALGORITHM_WEIGHTED_EXPONENTIAL,
            ALGORITHM_WEIGHTED_EXPONENTIAL_ALT,
        ]
        .contains(&v)
    {
        errs.push(FieldError::invalid_value(v, k));
    }
}

fn validate_initial_scale(
    a: &BTreeMap<String, String>,
    config: &AutoscalerConfig,
    errs: &mut FieldErrors,
) {
    let Some((k, v)) = get(a, INITIAL_SCALE_KEYS) else {
        return;
    };
    // Knative parses this one as a plain (64-bit) int and words the path oddly; kept as is.
    match v.parse::<i64>() {
        Err(_) => errs.push(FieldError::invalid_value(v, k)),
        Ok(i) if i < 0 => errs.push(FieldError::invalid_value(
            v,
            &format!("{k} must be greater than 0"),
        )),
        Ok(0) if !config.allow_zero_initial_scale => errs.push(FieldError::invalid_value(
            v,
            &format!("{k}=0 not allowed by cluster"),
        )),
        Ok(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anns(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Validates with the default config and returns each error as `message: paths`.
    fn check_with(kv: &[(&str, &str)], cfg: &AutoscalerConfig) -> Vec<String> {
        validate(&anns(kv), cfg)
            .0
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    fn check(kv: &[(&str, &str)]) -> Vec<String> {
        check_with(kv, &AutoscalerConfig::default())
    }

    #[test]
    fn valid_annotations_pass() {
        let ok: &[&[(&str, &str)]] = &[
            &[],
            &[(CLASS, KPA_CLASS)],
            &[(CLASS, HPA_CLASS), (METRIC, "cpu")],
            &[(CLASS, "custom.example.com")],
            &[(MIN_SCALE, "1"), (ACTIVATION_SCALE, "2"), (MAX_SCALE, "3")],
            &[(MIN_SCALE, "5"), (MAX_SCALE, "0")],
            &[(METRIC, "rps")],
            &[(METRIC, "concurrency")],
            &[(CLASS, "other"), (METRIC, "rps")],
            &[(TARGET, "0.01")],
            &[
                (TARGET_UTILIZATION_PERCENTAGE, "1"),
                (TARGET_BURST_CAPACITY, "-1"),
            ],
            &[(TARGET_BURST_CAPACITY, "0")],
            &[(WINDOW, "6s")],
            &[(WINDOW, "1h")],
            &[
                (PANIC_WINDOW_PERCENTAGE, "1"),
                (PANIC_THRESHOLD_PERCENTAGE, "110"),
            ],
            &[
                (PANIC_WINDOW_PERCENTAGE, "100"),
                (PANIC_THRESHOLD_PERCENTAGE, "1000"),
            ],
            &[(SCALE_DOWN_DELAY, "0")],
            &[(SCALE_DOWN_DELAY, "21m31s")],
            &[(SCALE_TO_ZERO_POD_RETENTION_PERIOD, "1.5s")],
            &[(INITIAL_SCALE, "2")],
            &[(METRIC_AGGREGATION_ALGORITHM, ""), (CLASS, KPA_CLASS)],
            &[
                (METRIC_AGGREGATION_ALGORITHM, "weightedExponential"),
                (CLASS, KPA_CLASS),
            ],
            &[(METRIC_AGGREGATION_ALGORITHM, "random"), (CLASS, "of-keys")],
            // Not checked unless the class is explicitly the KPA.
            &[(METRIC_AGGREGATION_ALGORITHM, "random")],
            &[(MIN_SCALE_LEGACY, "2"), (MAX_SCALE_LEGACY, "4")],
            &[("autoscaling.knative.dev/unknown", "x")],
        ];
        for kv in ok {
            assert_eq!(check(kv), Vec::<String>::new(), "for {kv:?}");
        }
    }

    #[test]
    fn class_rule() {
        assert_eq!(
            check(&[(CLASS, "unsupported.knative.dev")]),
            ["invalid value: unsupported.knative.dev: autoscaling.knative.dev/class"]
        );
    }

    #[test]
    fn min_max_scale_rules() {
        assert_eq!(
            check(&[(MIN_SCALE, "-1")]),
            ["expected 0 <= -1 <= 2147483647: autoscaling.knative.dev/min-scale"]
        );
        assert_eq!(
            check(&[(MAX_SCALE, "2147483648")]),
            ["expected 0 <= 2147483648 <= 2147483647: autoscaling.knative.dev/max-scale"]
        );
        assert_eq!(
            check(&[(MAX_SCALE, "-1")]),
            ["expected 0 <= -1 <= 2147483647: autoscaling.knative.dev/max-scale"]
        );
        assert_eq!(
            check(&[(MIN_SCALE, "foo")]),
            ["invalid value: foo: autoscaling.knative.dev/min-scale"]
        );
        assert_eq!(
            check(&[(MIN_SCALE, "5"), (MAX_SCALE, "2")]),
            [
                "max-scale=2 is less than min-scale=5: autoscaling.knative.dev/max-scale, autoscaling.knative.dev/min-scale"
            ]
        );
        // Legacy aliases are read (and reported under the key that was used).
        assert_eq!(
            check(&[(MIN_SCALE_LEGACY, "-3")]),
            ["expected 0 <= -3 <= 2147483647: autoscaling.knative.dev/minScale"]
        );
        // The canonical key wins over the alias.
        assert!(check(&[(MIN_SCALE, "1"), (MIN_SCALE_LEGACY, "-3")]).is_empty());
    }

    #[test]
    fn max_scale_limit_rules() {
        let cfg = AutoscalerConfig {
            max_scale_limit: 10,
            max_scale: 5,
            ..Default::default()
        };
        assert_eq!(
            check_with(&[(MAX_SCALE, "11")], &cfg),
            ["expected 1 <= 11 <= 10: autoscaling.knative.dev/max-scale"]
        );
        assert_eq!(
            check_with(&[(MAX_SCALE, "0")], &cfg),
            ["max-scale=0 (unlimited), must be less than 10: autoscaling.knative.dev/max-scale"]
        );
        assert!(check_with(&[(MAX_SCALE, "9")], &cfg).is_empty());
        // Without the annotation the config's own max-scale applies and is not re-checked.
        assert!(check_with(&[], &cfg).is_empty());
    }

    #[test]
    fn activation_scale_rules() {
        assert_eq!(
            check(&[(MIN_SCALE, "3"), (ACTIVATION_SCALE, "2")]),
            [
                "min-scale=3 is greater than activation-scale=2: autoscaling.knative.dev/activation-scale"
            ]
        );
        assert_eq!(
            check(&[(MAX_SCALE, "1"), (ACTIVATION_SCALE, "2")]),
            [
                "max-scale=1 is less than activation-scale=2: autoscaling.knative.dev/activation-scale"
            ]
        );
        assert_eq!(
            check(&[(ACTIVATION_SCALE, "1")]),
            ["activation-scale=1 must be greater than 1: autoscaling.knative.dev/activation-scale"]
        );
        assert_eq!(
            check(&[(ACTIVATION_SCALE, "two")]),
            ["invalid value: two: autoscaling.knative.dev/activation-scale"]
        );
    }

    #[test]
    fn float_rules() {
        let cases: &[(&str, &str, &str)] = &[
            (PANIC_WINDOW_PERCENTAGE, "-1", "expected 1 <= -1 <= 100"),
            (PANIC_WINDOW_PERCENTAGE, "202", "expected 1 <= 202 <= 100"),
            (PANIC_WINDOW_PERCENTAGE, "fifty", "invalid value: fifty"),
            (
                PANIC_THRESHOLD_PERCENTAGE,
                "109",
                "expected 110 <= 109 <= 1000",
            ),
            (
                PANIC_THRESHOLD_PERCENTAGE,
                "10009",
                "expected 110 <= 10009 <= 1000",
            ),
            (PANIC_THRESHOLD_PERCENTAGE, "fifty", "invalid value: fifty"),
            (TARGET, "-11", "target -11 should be at least 0.01"),
            (TARGET, "0", "target 0 should be at least 0.01"),
            (TARGET, "100}", "invalid value: 100}"),
            (TARGET_BURST_CAPACITY, "-11", "invalid value: -11"),
            (TARGET_BURST_CAPACITY, "qarashen", "invalid value: qarashen"),
            (TARGET_UTILIZATION_PERCENTAGE, "0", "expected 1 <= 0 <= 100"),
            (
                TARGET_UTILIZATION_PERCENTAGE,
                "101",
                "expected 1 <= 101 <= 100",
            ),
            (
                TARGET_UTILIZATION_PERCENTAGE,
                "dghyak",
                "invalid value: dghyak",
            ),
            (
                TARGET_UTILIZATION_PERCENTAGE_LEGACY,
                "0",
                "expected 1 <= 0 <= 100",
            ),
            (TARGET_BURST_CAPACITY_LEGACY, "-2", "invalid value: -2"),
        ];
        for (k, v, msg) in cases {
            assert_eq!(check(&[(k, v)]), [format!("{msg}: {k}")], "for {k}={v}");
        }
    }

    #[test]
    fn window_rules() {
        let cases: &[(&str, &str)] = &[
            (
                "jerry-was-a-racecar-driver",
                "invalid value: jerry-was-a-racecar-driver",
            ),
            ("1s", "expected 6s <= 1s <= 1h0m0s"),
            ("365h", "expected 6s <= 365h <= 1h0m0s"),
            ("6.5", "invalid value: 6.5"),
            ("6500ms", "must be specified with at most second precision"),
        ];
        for (v, msg) in cases {
            assert_eq!(
                check(&[(WINDOW, v)]),
                [format!("{msg}: {WINDOW}")],
                "for {v}"
            );
        }
    }

    #[test]
    fn delay_and_retention_rules() {
        for (k, whole) in [
            (SCALE_DOWN_DELAY, true),
            (SCALE_TO_ZERO_POD_RETENTION_PERIOD, false),
        ] {
            assert_eq!(
                check(&[(k, "311m")]),
                [format!("expected 0s <= 311m <= 1h0m0s: {k}")]
            );
            assert_eq!(
                check(&[(k, "-42s")]),
                [format!("expected 0s <= -42s <= 1h0m0s: {k}")]
            );
            assert_eq!(check(&[(k, "soon")]), [format!("invalid value: soon: {k}")]);
            let precise = check(&[(k, "42.5s")]);
            if whole {
                assert_eq!(
                    precise,
                    [format!(
                        "must be specified with at most second precision: {k}"
                    )]
                );
            } else {
                assert!(precise.is_empty());
            }
        }
        assert_eq!(
            check(&[(SCALE_DOWN_DELAY_LEGACY, "2h")]),
            [format!(
                "expected 0s <= 2h <= 1h0m0s: {SCALE_DOWN_DELAY_LEGACY}"
            )]
        );
    }

    #[test]
    fn metric_rules() {
        assert_eq!(
            check(&[(METRIC, "cpu")]),
            ["invalid value: cpu: autoscaling.knative.dev/metric"]
        );
        assert_eq!(
            check(&[(METRIC, ""), (CLASS, HPA_CLASS)]),
            ["invalid value: : autoscaling.knative.dev/metric"]
        );
        let hpa = AutoscalerConfig {
            pod_autoscaler_class: HPA_CLASS.to_string(),
            ..Default::default()
        };
        assert!(check_with(&[(METRIC, "cpu")], &hpa).is_empty());
    }

    #[test]
    fn algorithm_rule() {
        assert_eq!(
            check(&[
                (METRIC_AGGREGATION_ALGORITHM, "random-selection"),
                (CLASS, KPA_CLASS)
            ]),
            [
                "invalid value: random-selection: autoscaling.knative.dev/metric-aggregation-algorithm"
            ]
        );
    }

    #[test]
    fn initial_scale_rules() {
        assert_eq!(
            check(&[(INITIAL_SCALE, "0")]),
            ["invalid value: 0: autoscaling.knative.dev/initial-scale=0 not allowed by cluster"]
        );
        assert_eq!(
            check(&[(INITIAL_SCALE, "-1")]),
            ["invalid value: -1: autoscaling.knative.dev/initial-scale must be greater than 0"]
        );
        assert_eq!(
            check(&[(INITIAL_SCALE, "invalid")]),
            ["invalid value: invalid: autoscaling.knative.dev/initial-scale"]
        );
        let allow = AutoscalerConfig {
            allow_zero_initial_scale: true,
            ..Default::default()
        };
        assert!(check_with(&[(INITIAL_SCALE, "0")], &allow).is_empty());
    }

    #[test]
    fn several_errors_are_all_reported() {
        let got = check(&[
            (PANIC_THRESHOLD_PERCENTAGE, "fifty"),
            (PANIC_WINDOW_PERCENTAGE, "-11"),
            (MIN_SCALE, "-4"),
            (MAX_SCALE, "never"),
        ]);
        let mut got = got;
        got.sort();
        assert_eq!(
            got,
            [
                "expected 0 <= -4 <= 2147483647: autoscaling.knative.dev/min-scale",
                "expected 1 <= -11 <= 100: autoscaling.knative.dev/panic-window-percentage",
                "invalid value: fifty: autoscaling.knative.dev/panic-threshold-percentage",
                "invalid value: never: autoscaling.knative.dev/max-scale",
            ]
        );
    }

    #[test]
    fn resolves_defaults_from_config() {
        let s = RevisionScaling::from_annotations(&BTreeMap::new(), &AutoscalerConfig::default());
        assert_eq!(s.class, KPA_CLASS);
        assert_eq!(s.metric, METRIC_CONCURRENCY);
        assert_eq!((s.target, s.target_utilization), (None, None));
        assert_eq!((s.min_scale, s.max_scale, s.initial_scale), (0, 0, 1));
        assert_eq!(s.activation_scale, 0);
        assert_eq!(s.window, Duration::from_secs(60));
        assert_eq!(s.panic_window(), Duration::from_secs(6));
        assert_eq!(s.panic_threshold(), 2.0);
        assert_eq!(s.target_burst_capacity, 211.0);
        assert_eq!(s.scale_down_delay, Duration::ZERO);
        assert_eq!(s.scale_to_zero_pod_retention_period, Duration::ZERO);
        assert_eq!(s.metric_aggregation_algorithm, AggregationAlgorithm::Linear);
        // Default concurrency target: 100 × 70 % = 70.
        assert_eq!(
            s.metric_target(0, &AutoscalerConfig::default()),
            (70.0, 100.0)
        );
    }

    #[test]
    fn resolves_annotations_over_config() {
        let a = anns(&[
            (METRIC, "rps"),
            (TARGET, "150"),
            (TARGET_UTILIZATION_PERCENTAGE_LEGACY, "50"),
            (MIN_SCALE_LEGACY, "2"),
            (MAX_SCALE, "9"),
            (INITIAL_SCALE, "3"),
            (ACTIVATION_SCALE, "4"),
            (SCALE_DOWN_DELAY_LEGACY, "30s"),
            (WINDOW, "2m"),
            (PANIC_WINDOW_PERCENTAGE, "25"),
            (PANIC_THRESHOLD_PERCENTAGE_LEGACY, "150"),
            (TARGET_BURST_CAPACITY, "-1"),
            (SCALE_TO_ZERO_POD_RETENTION_PERIOD, "1m"),
            (METRIC_AGGREGATION_ALGORITHM_LEGACY, "weightedExponential"),
        ]);
        let cfg = AutoscalerConfig::default();
        let s = RevisionScaling::from_annotations(&a, &cfg);
        assert!(s.is_rps());
        assert_eq!(s.target, Some(150.0));
        assert_eq!(s.target_utilization, Some(0.5));
        assert_eq!((s.min_scale, s.max_scale, s.initial_scale), (2, 9, 3));
        assert_eq!(s.activation_scale, 4);
        assert_eq!(s.scale_down_delay, Duration::from_secs(30));
        assert_eq!(s.window, Duration::from_secs(120));
        assert_eq!(s.panic_window(), Duration::from_secs(30));
        assert_eq!(s.panic_threshold(), 1.5);
        assert_eq!(s.target_burst_capacity, -1.0);
        assert_eq!(
            s.scale_to_zero_pod_retention_period,
            Duration::from_secs(60)
        );
        assert_eq!(
            s.metric_aggregation_algorithm,
            AggregationAlgorithm::WeightedExponential
        );
        assert_eq!(s.metric_target(0, &cfg), (75.0, 150.0));
    }

    #[test]
    fn metric_target_cases() {
        let cfg = AutoscalerConfig::default();
        let with = |kv: &[(&str, &str)]| RevisionScaling::from_annotations(&anns(kv), &cfg);
        // containerConcurrency 10 → total 10, target 7.
        assert_eq!(with(&[]).metric_target(10, &cfg), (7.0, 10.0));
        // target annotation is capped at containerConcurrency.
        assert_eq!(with(&[(TARGET, "50")]).metric_target(10, &cfg), (7.0, 10.0));
        assert_eq!(with(&[(TARGET, "5")]).metric_target(10, &cfg), (3.5, 5.0));
        // rps default: 200 × 0.7 = 140, whatever the container concurrency.
        let (t, total) = with(&[(METRIC, "rps")]).metric_target(10, &cfg);
        assert!((t - 140.0).abs() < 1e-9);
        assert_eq!(total, 200.0);
        // The target never goes below 0.01.
        let s = with(&[(TARGET, "0.01"), (TARGET_UTILIZATION_PERCENTAGE, "1")]);
        assert_eq!(s.metric_target(0, &cfg).0, 0.01);
    }

    #[test]
    fn initial_scale_zero_needs_permission() {
        let a = anns(&[(INITIAL_SCALE, "0")]);
        let s = RevisionScaling::from_annotations(&a, &AutoscalerConfig::default());
        assert_eq!(s.initial_scale, 1);
        let allow = AutoscalerConfig {
            allow_zero_initial_scale: true,
            ..Default::default()
        };
        assert_eq!(
            RevisionScaling::from_annotations(&a, &allow).initial_scale,
            0
        );
    }

    #[test]
    fn unparseable_values_fall_back_to_config() {
        let a = anns(&[(MIN_SCALE, "x"), (WINDOW, "soon")]);
        let s = RevisionScaling::from_annotations(&a, &AutoscalerConfig::default());
        assert_eq!(s.min_scale, 0);
        assert_eq!(s.window, Duration::from_secs(60));
    }
}

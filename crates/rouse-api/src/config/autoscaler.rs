//! `config-autoscaler`: every key of Knative's autoscaler ConfigMap with its default, parsed
//! and validated with Knative's rules and messages.

use std::time::Duration;

use super::{ConfigData, ConfigError};

/// The ConfigMap's name.
pub const CONFIG_NAME: &str = "config-autoscaler";

/// The KPA class name (`pod-autoscaler-class` default).
pub const KPA_CLASS: &str = "kpa.autoscaling.knative.dev";
/// The HPA class name.
pub const HPA_CLASS: &str = "hpa.autoscaling.knative.dev";

/// Smallest per-pod target any metric may have.
pub const TARGET_MIN: f64 = 0.01;
/// Shortest stable window.
pub const WINDOW_MIN: Duration = Duration::from_secs(6);
/// Longest stable window (also the bound of the delay and retention annotations).
pub const WINDOW_MAX: Duration = Duration::from_secs(3600);
/// Bounds of `panic-window-percentage`.
pub const PANIC_WINDOW_PERCENTAGE_MIN: f64 = 1.0;
/// Bounds of `panic-window-percentage`.
pub const PANIC_WINDOW_PERCENTAGE_MAX: f64 = 100.0;
/// Bounds of the `panic-threshold-percentage` annotation.
pub const PANIC_THRESHOLD_PERCENTAGE_MIN: f64 = 110.0;
/// Bounds of the `panic-threshold-percentage` annotation.
pub const PANIC_THRESHOLD_PERCENTAGE_MAX: f64 = 1000.0;
/// Target utilization for non-concurrency metrics (rps); not settable in the ConfigMap.
pub const RPS_TARGET_UTILIZATION: f64 = 0.7;

/// Every key `config-autoscaler` accepts (`_example` is also accepted and ignored).
pub const KEYS: &[&str] = &[
    "container-concurrency-target-default",
    "container-concurrency-target-percentage",
    "requests-per-second-target-default",
    "target-burst-capacity",
    "stable-window",
    "panic-window-percentage",
    "panic-threshold-percentage",
    "max-scale-up-rate",
    "max-scale-down-rate",
    "enable-scale-to-zero",
    "scale-to-zero-grace-period",
    "scale-to-zero-pod-retention-period",
    "scale-down-delay",
    "pod-autoscaler-class",
    "activator-capacity",
    "activator-queue-depth",
    "initial-scale",
    "allow-zero-initial-scale",
    "min-scale",
    "max-scale",
    "max-scale-limit",
];

/// Parsed `config-autoscaler`.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscalerConfig {
    pub container_concurrency_target_default: f64,
    /// Stored as a fraction (0.7), as Knative does.
    pub container_concurrency_target_percentage: f64,
    pub rps_target_default: f64,
    pub target_burst_capacity: f64,
    pub stable_window: Duration,
    pub panic_window_percentage: f64,
    pub panic_threshold_percentage: f64,
    pub max_scale_up_rate: f64,
    pub max_scale_down_rate: f64,
    pub enable_scale_to_zero: bool,
    pub scale_to_zero_grace_period: Duration,
    pub scale_to_zero_pod_retention_period: Duration,
    pub scale_down_delay: Duration,
    pub pod_autoscaler_class: String,
    pub activator_capacity: f64,
    /// Rouse extension: requests one revision may have waiting in the activator before it
    /// answers 503 at once (Knative's queue is effectively unbounded).
    pub activator_queue_depth: usize,
    pub initial_scale: i32,
    pub allow_zero_initial_scale: bool,
    pub min_scale: i32,
    pub max_scale: i32,
    pub max_scale_limit: i32,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        Self {
            container_concurrency_target_default: 100.0,
            container_concurrency_target_percentage: 0.7,
            rps_target_default: 200.0,
            target_burst_capacity: 211.0,
            stable_window: Duration::from_secs(60),
            panic_window_percentage: 10.0,
            panic_threshold_percentage: 200.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            enable_scale_to_zero: true,
            scale_to_zero_grace_period: Duration::from_secs(30),
            scale_to_zero_pod_retention_period: Duration::ZERO,
            scale_down_delay: Duration::ZERO,
            pod_autoscaler_class: KPA_CLASS.to_string(),
            activator_capacity: 100.0,
            activator_queue_depth: 10_000,
            initial_scale: 1,
            allow_zero_initial_scale: false,
            min_scale: 0,
            max_scale: 0,
            max_scale_limit: 0,
        }
    }
}

impl AutoscalerConfig {
    /// Parses the data of a `config-autoscaler` ConfigMap: missing keys keep Knative's
    /// defaults, `_example` is ignored, an unknown key or a value Knative would refuse is an
    /// error carrying Knative's message.
    pub fn from_data(d: &ConfigData) -> Result<Self, ConfigError> {
        let mut c = Self::default();
        for key in d.keys() {
            if key != "_example" && !KEYS.contains(&key.as_str()) {
                return Err(err(key, format!("unknown key {key:?} in {CONFIG_NAME}")));
            }
        }
        // Durations are kept signed (nanoseconds) until validated, so negative values get
        // Knative's "cannot be negative" messages rather than a parse error.
        let mut stable_window = nanos(c.stable_window);
        let mut scale_down_delay = nanos(c.scale_down_delay);
        let mut grace = nanos(c.scale_to_zero_grace_period);
        let mut retention = nanos(c.scale_to_zero_pod_retention_period);

        for (key, raw) in d {
            let k = key.as_str();
            match k {
                "pod-autoscaler-class" => c.pod_autoscaler_class = raw.trim().to_string(),
                "enable-scale-to-zero" => c.enable_scale_to_zero = parse_bool(k, raw)?,
                "allow-zero-initial-scale" => c.allow_zero_initial_scale = parse_bool(k, raw)?,
                "max-scale-up-rate" => c.max_scale_up_rate = parse_f64(k, raw)?,
                "max-scale-down-rate" => c.max_scale_down_rate = parse_f64(k, raw)?,
                "container-concurrency-target-percentage" => {
                    c.container_concurrency_target_percentage = parse_f64(k, raw)?
                }
                "container-concurrency-target-default" => {
                    c.container_concurrency_target_default = parse_f64(k, raw)?
                }
                "requests-per-second-target-default" => c.rps_target_default = parse_f64(k, raw)?,
                "target-burst-capacity" => c.target_burst_capacity = parse_f64(k, raw)?,
                "panic-window-percentage" => c.panic_window_percentage = parse_f64(k, raw)?,
                "activator-capacity" => c.activator_capacity = parse_f64(k, raw)?,
                "activator-queue-depth" => {
                    let v = parse_i32(k, raw)?;
                    if v < 1 {
                        return Err(err(
                            k,
                            format!("activator-queue-depth = {v}, must be at least 1"),
                        ));
                    }
                    c.activator_queue_depth = v as usize;
                }
                "panic-threshold-percentage" => c.panic_threshold_percentage = parse_f64(k, raw)?,
                "initial-scale" => c.initial_scale = parse_i32(k, raw)?,
                "min-scale" => c.min_scale = parse_i32(k, raw)?,
                "max-scale" => c.max_scale = parse_i32(k, raw)?,
                "max-scale-limit" => c.max_scale_limit = parse_i32(k, raw)?,
                "stable-window" => stable_window = parse_dur(k, raw)?,
                "scale-down-delay" => scale_down_delay = parse_dur(k, raw)?,
                "scale-to-zero-grace-period" => grace = parse_dur(k, raw)?,
                "scale-to-zero-pod-retention-period" => retention = parse_dur(k, raw)?,
                _ => {}
            }
        }
        // Values above 1 are percentages; (0, 1] is accepted as a fraction for legacy reasons.
        if c.container_concurrency_target_percentage > 1.0 {
            c.container_concurrency_target_percentage /= 100.0;
        }

        const SEC: i128 = 1_000_000_000;
        if grace <= 0 {
            let v = go_duration(grace);
            return Err(err(
                "scale-to-zero-grace-period",
                format!("scale-to-zero-grace-period must be positive, was: {v}"),
            ));
        }
        if scale_down_delay < 0 {
            let v = go_duration(scale_down_delay);
            return Err(err(
                "scale-down-delay",
                format!("scale-down-delay cannot be negative, was: {v}"),
            ));
        }
        if scale_down_delay % SEC != 0 {
            let v = go_duration(scale_down_delay);
            return Err(err(
                "scale-down-delay",
                format!("scale-down-delay = {v}, must be specified with at most second precision"),
            ));
        }
        if retention < 0 {
            let v = go_duration(retention);
            return Err(err(
                "scale-to-zero-pod-retention-period",
                format!("scale-to-zero-pod-retention-period cannot be negative, was: {v}"),
            ));
        }
        let tbc = c.target_burst_capacity;
        if tbc < 0.0 && tbc != -1.0 {
            return Err(err(
                "target-burst-capacity",
                format!(
                    "target-burst-capacity must be either non-negative or -1 (for unlimited), was: {tbc:.6}"
                ),
            ));
        }
        let frac = c.container_concurrency_target_percentage;
        if frac <= 0.0 || frac > 1.0 || frac.is_nan() {
            return Err(err(
                "container-concurrency-target-percentage",
                format!(
                    "container-concurrency-target-percentage = {frac:.6} is outside of valid range of (0, 100]"
                ),
            ));
        }
        let x = frac * c.container_concurrency_target_default;
        if x < TARGET_MIN || x.is_nan() {
            return Err(err(
                "container-concurrency-target-default",
                format!(
                    "container-concurrency-target-percentage and container-concurrency-target-default yield target concurrency of {}, can't be less than {}",
                    go_float(x),
                    go_float(TARGET_MIN)
                ),
            ));
        }
        if c.rps_target_default < TARGET_MIN || c.rps_target_default.is_nan() {
            return Err(err(
                "requests-per-second-target-default",
                format!(
                    "requests-per-second-target-default must be at least {}, was: {}",
                    go_float(TARGET_MIN),
                    go_float(c.rps_target_default)
                ),
            ));
        }
        if c.activator_capacity < 1.0 || c.activator_capacity.is_nan() {
            return Err(err(
                "activator-capacity",
                format!(
                    "activator-capacity = {}, must be at least 1",
                    go_float(c.activator_capacity)
                ),
            ));
        }
        if c.max_scale_up_rate <= 1.0 || c.max_scale_up_rate.is_nan() {
            return Err(err(
                "max-scale-up-rate",
                format!(
                    "max-scale-up-rate = {}, must be greater than 1.0",
                    go_float(c.max_scale_up_rate)
                ),
            ));
        }
        if c.max_scale_down_rate <= 1.0 || c.max_scale_down_rate.is_nan() {
            return Err(err(
                "max-scale-down-rate",
                format!(
                    "max-scale-down-rate = {}, must be greater than 1.0",
                    go_float(c.max_scale_down_rate)
                ),
            ));
        }
        if stable_window < nanos(WINDOW_MIN) || stable_window > nanos(WINDOW_MAX) {
            return Err(err(
                "stable-window",
                format!(
                    "stable-window = {}, must be in [6s; 1h0m0s] range",
                    go_duration(stable_window)
                ),
            ));
        }
        if stable_window % SEC != 0 {
            return Err(err(
                "stable-window",
                format!(
                    "stable-window = {}, must be specified with at most second precision",
                    go_duration(stable_window)
                ),
            ));
        }
        let pwp = c.panic_window_percentage;
        if !(PANIC_WINDOW_PERCENTAGE_MIN..=PANIC_WINDOW_PERCENTAGE_MAX).contains(&pwp) {
            return Err(err(
                "panic-window-percentage",
                format!(
                    "panic-window-percentage = {}, must be in [1, 100] interval",
                    go_float(pwp)
                ),
            ));
        }
        if c.initial_scale < 0 || (c.initial_scale == 0 && !c.allow_zero_initial_scale) {
            return Err(err(
                "initial-scale",
                format!(
                    "initial-scale = {}, must be at least 0 (or at least 1 when allow-zero-initial-scale is false)",
                    c.initial_scale
                ),
            ));
        }
        if c.min_scale < 0 {
            return Err(err(
                "min-scale",
                format!("min-scale = {}, must be at least 0", c.min_scale),
            ));
        }
        let min_max_scale = if c.max_scale_limit > 0 { 1 } else { 0 };
        if c.max_scale < min_max_scale || (c.max_scale_limit > 0 && c.max_scale > c.max_scale_limit)
        {
            return Err(err(
                "max-scale",
                format!(
                    "max-scale = {}, must be in [{}, max-scale-limit({})] range",
                    c.max_scale, min_max_scale, c.max_scale_limit
                ),
            ));
        }
        if c.max_scale_limit < 0 {
            return Err(err(
                "max-scale-limit",
                format!(
                    "max-scale-limit = {}, must be at least 0",
                    c.max_scale_limit
                ),
            ));
        }
        if c.min_scale > c.max_scale && c.max_scale > 0 {
            return Err(err(
                "min-scale",
                format!(
                    "min-scale ({}) must be less than max-scale ({})",
                    c.min_scale, c.max_scale
                ),
            ));
        }
        c.stable_window = to_duration(stable_window);
        c.scale_down_delay = to_duration(scale_down_delay);
        c.scale_to_zero_grace_period = to_duration(grace);
        c.scale_to_zero_pod_retention_period = to_duration(retention);
        Ok(c)
    }

    /// The panic window: `panic-window-percentage` of the stable window, rounded to whole
    /// seconds and at least one second (what Knative's metric uses).
    pub fn panic_window(&self) -> Duration {
        panic_window(self.stable_window, self.panic_window_percentage)
    }
}

/// The panic window for a stable window and percentage: rounded to whole seconds, min 1 s.
pub fn panic_window(stable_window: Duration, percentage: f64) -> Duration {
    let secs = (stable_window.as_secs_f64() * percentage / 100.0).round();
    Duration::from_secs((secs as u64).max(1))
}

fn err(key: &str, reason: String) -> ConfigError {
    ConfigError::new(CONFIG_NAME, key, reason)
}

fn parse_err(key: &str, inner: String) -> ConfigError {
    err(
        key,
        format!("failed to parse data: failed to parse {key:?}: {inner}"),
    )
}

fn parse_bool(key: &str, raw: &str) -> Result<bool, ConfigError> {
    go_parse_bool(raw).ok_or_else(|| {
        parse_err(
            key,
            format!("strconv.ParseBool: parsing {raw:?}: invalid syntax"),
        )
    })
}

fn parse_f64(key: &str, raw: &str) -> Result<f64, ConfigError> {
    go_parse_float(raw).ok_or_else(|| {
        parse_err(
            key,
            format!("strconv.ParseFloat: parsing {raw:?}: invalid syntax"),
        )
    })
}

fn parse_i32(key: &str, raw: &str) -> Result<i32, ConfigError> {
    go_parse_i32(raw)
        .map_err(|why| parse_err(key, format!("strconv.ParseInt: parsing {raw:?}: {why}")))
}

fn parse_dur(key: &str, raw: &str) -> Result<i128, ConfigError> {
    parse_go_duration_nanos(raw).map_err(|e| parse_err(key, e))
}

fn nanos(d: Duration) -> i128 {
    d.as_nanos() as i128
}

fn to_duration(n: i128) -> Duration {
    Duration::from_nanos(n.max(0) as u64)
}

/// Go's `strconv.ParseBool`.
pub(crate) fn go_parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `strconv.ParseFloat(s, 64)` for decimal forms (no surrounding spaces allowed).
pub(crate) fn go_parse_float(s: &str) -> Option<f64> {
    if s.is_empty() || s.trim() != s {
        return None;
    }
    s.parse::<f64>().ok()
}

/// Go's `strconv.ParseInt(s, 10, 32)`: `Err("invalid syntax" | "value out of range")`.
pub(crate) fn go_parse_i32(s: &str) -> Result<i32, &'static str> {
    use std::num::IntErrorKind;
    s.parse::<i32>().map_err(|e| match e.kind() {
        IntErrorKind::PosOverflow | IntErrorKind::NegOverflow => "value out of range",
        _ => "invalid syntax",
    })
}

/// Go's `time.ParseDuration`, exact to the nanosecond and signed. Errors read like Go's.
pub(crate) fn parse_go_duration_nanos(s: &str) -> Result<i128, String> {
    let invalid = || format!("time: invalid duration {s:?}");
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(r) = rest.strip_prefix('.') {
            let frac_len = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            frac_part = &r[..frac_len];
            rest = &r[frac_len..];
            if int_part.is_empty() && frac_part.is_empty() {
                return Err(invalid());
            }
        } else if int_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            _ => return Err(format!("time: unknown unit {unit:?} in duration {s:?}")),
        };
        let whole: i128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| invalid())?
        };
        let mut v = whole.checked_mul(scale).ok_or_else(invalid)?;
        // The fraction contributes digit by digit, truncated at nanoseconds as Go does.
        let mut place = scale;
        for d in frac_part.bytes() {
            place /= 10;
            if place == 0 {
                break;
            }
            v += i128::from(d - b'0') * place;
        }
        total = total.checked_add(v).ok_or_else(invalid)?;
        if total > i128::from(i64::MAX) {
            return Err(invalid());
        }
    }
    Ok(if neg { -total } else { total })
}

/// Formats signed nanoseconds as Go's `time.Duration.String()` does (`1m0s`, `-1.5s`, `500ms`).
pub(crate) fn go_duration(n: i128) -> String {
    if n == 0 {
        return "0s".to_string();
    }
    let sign = if n < 0 { "-" } else { "" };
    let u = n.unsigned_abs();
    let frac = |v: u128, div: u128| {
        let whole = v / div;
        let rem = v % div;
        if rem == 0 {
            whole.to_string()
        } else {
            let digits = div.ilog10() as usize;
            let s = format!("{rem:0digits$}");
            format!("{whole}.{}", s.trim_end_matches('0'))
        }
    };
    if u < 1_000 {
        return format!("{sign}{u}ns");
    }
    if u < 1_000_000 {
        return format!("{sign}{}µs", frac(u, 1_000));
    }
    if u < 1_000_000_000 {
        return format!("{sign}{}ms", frac(u, 1_000_000));
    }
    let h = u / 3_600_000_000_000;
    let m = (u / 60_000_000_000) % 60;
    let s = u % 60_000_000_000;
    let mut out = sign.to_string();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&format!("{}s", frac(s, 1_000_000_000)));
    out
}

/// Formats a float as Go's `%v` does (shortest form; exponent for very large/small values).
pub(crate) fn go_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".to_string();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    let a = v.abs();
    if a != 0.0 && !(1e-4..1e21).contains(&a) {
        let s = format!("{v:e}");
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mant}e{sign}{:02}", exp.abs());
    }
    format!("{v}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(kv: &[(&str, &str)]) -> ConfigData {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn reason(kv: &[(&str, &str)]) -> String {
        AutoscalerConfig::from_data(&data(kv)).unwrap_err().reason
    }

    #[test]
    fn empty_data_gives_knative_defaults() {
        let c = AutoscalerConfig::from_data(&ConfigData::new()).unwrap();
        assert_eq!(c, AutoscalerConfig::default());
        assert_eq!(c.target_burst_capacity, 211.0);
        assert_eq!(c.container_concurrency_target_percentage, 0.7);
        assert_eq!(c.panic_window(), Duration::from_secs(6));
    }

    #[test]
    fn example_is_ignored_and_unknown_keys_refused() {
        let c = AutoscalerConfig::from_data(&data(&[("_example", "anything: here")])).unwrap();
        assert_eq!(c, AutoscalerConfig::default());
        let e = AutoscalerConfig::from_data(&data(&[("stable-windw", "60s")])).unwrap_err();
        assert_eq!(e.configmap, "config-autoscaler");
        assert_eq!(e.key, "stable-windw");
    }

    #[test]
    fn parses_every_key() {
        let c = AutoscalerConfig::from_data(&data(&[
            ("container-concurrency-target-default", "50"),
            ("container-concurrency-target-percentage", "80"),
            ("requests-per-second-target-default", "150"),
            ("target-burst-capacity", "-1"),
            ("stable-window", "2m"),
            ("panic-window-percentage", "20.5"),
            ("panic-threshold-percentage", "300"),
            ("max-scale-up-rate", "10"),
            ("max-scale-down-rate", "4"),
            ("enable-scale-to-zero", "False"),
            ("scale-to-zero-grace-period", "45s"),
            ("scale-to-zero-pod-retention-period", "1m30s"),
            ("scale-down-delay", "15s"),
            ("pod-autoscaler-class", "hpa.autoscaling.knative.dev"),
            ("activator-capacity", "200"),
            ("initial-scale", "0"),
            ("allow-zero-initial-scale", "true"),
            ("min-scale", "2"),
            ("max-scale", "8"),
            ("max-scale-limit", "10"),
        ]))
        .unwrap();
        assert_eq!(c.container_concurrency_target_default, 50.0);
        assert!((c.container_concurrency_target_percentage - 0.8).abs() < 1e-12);
        assert_eq!(c.rps_target_default, 150.0);
        assert_eq!(c.target_burst_capacity, -1.0);
        assert_eq!(c.stable_window, Duration::from_secs(120));
        assert_eq!(c.panic_window_percentage, 20.5);
        assert_eq!(c.panic_threshold_percentage, 300.0);
        assert_eq!(c.max_scale_up_rate, 10.0);
        assert_eq!(c.max_scale_down_rate, 4.0);
        assert!(!c.enable_scale_to_zero);
        assert_eq!(c.scale_to_zero_grace_period, Duration::from_secs(45));
        assert_eq!(
            c.scale_to_zero_pod_retention_period,
            Duration::from_secs(90)
        );
        assert_eq!(c.scale_down_delay, Duration::from_secs(15));
        assert_eq!(c.pod_autoscaler_class, HPA_CLASS);
        assert_eq!(c.activator_capacity, 200.0);
        assert_eq!(c.initial_scale, 0);
        assert!(c.allow_zero_initial_scale);
        assert_eq!((c.min_scale, c.max_scale, c.max_scale_limit), (2, 8, 10));
        // 20.5% of 120 s = 24.6 s, rounded to 25 s.
        assert_eq!(c.panic_window(), Duration::from_secs(25));
    }

    #[test]
    fn fraction_form_of_target_percentage_is_kept() {
        let c = AutoscalerConfig::from_data(&data(&[(
            "container-concurrency-target-percentage",
            "0.5",
        )]))
        .unwrap();
        assert_eq!(c.container_concurrency_target_percentage, 0.5);
    }

    #[test]
    fn parse_errors_name_the_key() {
        assert_eq!(
            reason(&[("max-scale-up-rate", "fast")]),
            r#"failed to parse data: failed to parse "max-scale-up-rate": strconv.ParseFloat: parsing "fast": invalid syntax"#
        );
        assert_eq!(
            reason(&[("enable-scale-to-zero", "yes")]),
            r#"failed to parse data: failed to parse "enable-scale-to-zero": strconv.ParseBool: parsing "yes": invalid syntax"#
        );
        assert_eq!(
            reason(&[("max-scale", "99999999999")]),
            r#"failed to parse data: failed to parse "max-scale": strconv.ParseInt: parsing "99999999999": value out of range"#
        );
        assert_eq!(
            reason(&[("stable-window", "60")]),
            r#"failed to parse data: failed to parse "stable-window": time: missing unit in duration "60""#
        );
    }

    #[test]
    fn validation_messages_match_knative() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("scale-to-zero-grace-period", "0s")],
                "scale-to-zero-grace-period must be positive, was: 0s",
            ),
            (
                &[("scale-down-delay", "-1s")],
                "scale-down-delay cannot be negative, was: -1s",
            ),
            (
                &[("scale-down-delay", "1500ms")],
                "scale-down-delay = 1.5s, must be specified with at most second precision",
            ),
            (
                &[("scale-to-zero-pod-retention-period", "-5m")],
                "scale-to-zero-pod-retention-period cannot be negative, was: -5m0s",
            ),
            (
                &[("target-burst-capacity", "-2")],
                "target-burst-capacity must be either non-negative or -1 (for unlimited), was: -2.000000",
            ),
            (
                &[("container-concurrency-target-percentage", "0")],
                "container-concurrency-target-percentage = 0.000000 is outside of valid range of (0, 100]",
            ),
            (
                &[("container-concurrency-target-percentage", "150")],
                "container-concurrency-target-percentage = 1.500000 is outside of valid range of (0, 100]",
            ),
            (
                &[("container-concurrency-target-default", "0.01")],
                "container-concurrency-target-percentage and container-concurrency-target-default yield target concurrency of 0.006999999999999999, can't be less than 0.01",
            ),
            (
                &[("requests-per-second-target-default", "0.001")],
                "requests-per-second-target-default must be at least 0.01, was: 0.001",
            ),
            (
                &[("activator-capacity", "0.5")],
                "activator-capacity = 0.5, must be at least 1",
            ),
            (
                &[("max-scale-up-rate", "1")],
                "max-scale-up-rate = 1, must be greater than 1.0",
            ),
            (
                &[("max-scale-down-rate", "0.5")],
                "max-scale-down-rate = 0.5, must be greater than 1.0",
            ),
            (
                &[("stable-window", "5s")],
                "stable-window = 5s, must be in [6s; 1h0m0s] range",
            ),
            (
                &[("stable-window", "2h")],
                "stable-window = 2h0m0s, must be in [6s; 1h0m0s] range",
            ),
            (
                &[("stable-window", "6500ms")],
                "stable-window = 6.5s, must be specified with at most second precision",
            ),
            (
                &[("panic-window-percentage", "0.5")],
                "panic-window-percentage = 0.5, must be in [1, 100] interval",
            ),
            (
                &[("panic-window-percentage", "101")],
                "panic-window-percentage = 101, must be in [1, 100] interval",
            ),
            (
                &[("initial-scale", "0")],
                "initial-scale = 0, must be at least 0 (or at least 1 when allow-zero-initial-scale is false)",
            ),
            (
                &[
                    ("initial-scale", "-1"),
                    ("allow-zero-initial-scale", "true"),
                ],
                "initial-scale = -1, must be at least 0 (or at least 1 when allow-zero-initial-scale is false)",
            ),
            (&[("min-scale", "-1")], "min-scale = -1, must be at least 0"),
            (
                &[("max-scale", "-1")],
                "max-scale = -1, must be in [0, max-scale-limit(0)] range",
            ),
            (
                &[("max-scale-limit", "10")],
                "max-scale = 0, must be in [1, max-scale-limit(10)] range",
            ),
            (
                &[("max-scale-limit", "10"), ("max-scale", "11")],
                "max-scale = 11, must be in [1, max-scale-limit(10)] range",
            ),
            (
                &[("max-scale-limit", "-1")],
                "max-scale-limit = -1, must be at least 0",
            ),
            (
                &[("min-scale", "5"), ("max-scale", "3")],
                "min-scale (5) must be less than max-scale (3)",
            ),
        ];
        for (kv, want) in cases {
            assert_eq!(&reason(kv), want, "for {kv:?}");
        }
    }

    #[test]
    fn panic_threshold_is_not_range_checked_in_the_configmap() {
        let c =
            AutoscalerConfig::from_data(&data(&[("panic-threshold-percentage", "50")])).unwrap();
        assert_eq!(c.panic_threshold_percentage, 50.0);
    }

    #[test]
    fn go_durations_round_trip() {
        assert_eq!(parse_go_duration_nanos("1m30s").unwrap(), 90_000_000_000);
        assert_eq!(parse_go_duration_nanos("1.5h").unwrap(), 5_400_000_000_000);
        assert_eq!(parse_go_duration_nanos("-0.5s").unwrap(), -500_000_000);
        assert_eq!(parse_go_duration_nanos(".5s").unwrap(), 500_000_000);
        assert_eq!(parse_go_duration_nanos("0").unwrap(), 0);
        assert!(parse_go_duration_nanos("").is_err());
        assert!(parse_go_duration_nanos("s").is_err());
        assert!(parse_go_duration_nanos("1x").is_err());
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(-1_500_000_000), "-1.5s");
        assert_eq!(go_duration(500_000_000), "500ms");
        assert_eq!(go_duration(1_500), "1.5µs");
        assert_eq!(go_float(1.0), "1");
        assert_eq!(go_float(0.01), "0.01");
        assert_eq!(go_float(1e21), "1e+21");
        assert_eq!(go_float(1e-5), "1e-05");
    }
}

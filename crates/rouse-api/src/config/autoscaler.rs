//! `config-autoscaler`: every key of Knative's autoscaler ConfigMap with its default.

use std::time::Duration;

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
            pod_autoscaler_class: "kpa.autoscaling.knative.dev".to_string(),
            activator_capacity: 100.0,
            initial_scale: 1,
            allow_zero_initial_scale: false,
            min_scale: 0,
            max_scale: 0,
            max_scale_limit: 0,
        }
    }
}

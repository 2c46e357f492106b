//! Knative's ConfigMaps (`config-defaults`, `config-autoscaler`, `config-network`, `config-gc`,
//! `config-features`), parsed once into typed, immutable values with Knative's keys and defaults.

pub mod autoscaler;
pub mod defaults;
pub mod features;
pub mod gc;
pub mod network;

use std::collections::BTreeMap;

/// A config error: which ConfigMap and key, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{configmap}: {key}: {reason}")]
pub struct ConfigError {
    /// The ConfigMap's name, e.g. `config-autoscaler`.
    pub configmap: String,
    /// The offending key.
    pub key: String,
    /// Why it was refused.
    pub reason: String,
}

impl ConfigError {
    /// A new error.
    pub fn new(configmap: &str, key: &str, reason: impl Into<String>) -> Self {
        Self {
            configmap: configmap.to_string(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

/// The data of one ConfigMap.
pub type ConfigData = BTreeMap<String, String>;

/// Every config Rouse reads, with Knative's defaults for what was not given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    pub defaults: defaults::DefaultsConfig,
    pub autoscaler: autoscaler::AutoscalerConfig,
    pub network: network::NetworkConfig,
    pub gc: gc::GcConfig,
    pub features: features::FeaturesConfig,
}

//! `config-rouse`: Rouse's own limits, beside Knative's ConfigMaps: how much a client may
//! create, and how long the API waits for a request body.

use std::time::Duration;

use super::{ConfigData, ConfigError, check_keys, get};
use crate::duration::parse_go_duration;

/// The ConfigMap's name.
pub const NAME: &str = "config-rouse";

/// Parsed `config-rouse`. A limit of `None` is "disabled".
#[derive(Debug, Clone, PartialEq)]
pub struct RouseConfig {
    /// The most Services (and, counted apart, Configurations) in one namespace.
    pub max_services_per_namespace: Option<u64>,
    /// The most Services (and, counted apart, Configurations) in all namespaces together.
    pub max_services: Option<u64>,
    /// The most Revisions in all namespaces together, checked when a client creates one
    /// directly (those Configurations make are bounded by `config-gc`).
    pub max_revisions: Option<u64>,
    /// The longest the API waits for a whole request body.
    pub api_body_timeout: Duration,
    /// The longest the API waits for the next bytes of a request body.
    pub api_body_idle_timeout: Duration,
}

impl Default for RouseConfig {
    fn default() -> Self {
        Self {
            max_services_per_namespace: Some(500),
            max_services: Some(1000),
            max_revisions: Some(10_000),
            api_body_timeout: Duration::from_secs(30),
            api_body_idle_timeout: Duration::from_secs(10),
        }
    }
}

const KEYS: &[&str] = &[
    "max-services-per-namespace",
    "max-services",
    "max-revisions",
    "api-body-timeout",
    "api-body-idle-timeout",
];

impl RouseConfig {
    /// Parses the data: counts or `disabled`, positive durations.
    pub fn from_data(d: &ConfigData) -> Result<Self, ConfigError> {
        check_keys(NAME, d, KEYS)?;
        let mut c = Self::default();
        for (key, target) in [
            (
                "max-services-per-namespace",
                &mut c.max_services_per_namespace,
            ),
            ("max-services", &mut c.max_services),
            ("max-revisions", &mut c.max_revisions),
        ] {
            match get(d, key) {
                None | Some("") => {}
                Some(v) if v.eq_ignore_ascii_case("disabled") => *target = None,
                Some(v) => {
                    *target = Some(v.parse().map_err(|_| {
                        ConfigError::new(
                            NAME,
                            key,
                            format!(
                                "invalid count {v:?} (want a non-negative integer or disabled)"
                            ),
                        )
                    })?)
                }
            }
        }
        for (key, target) in [
            ("api-body-timeout", &mut c.api_body_timeout),
            ("api-body-idle-timeout", &mut c.api_body_idle_timeout),
        ] {
            match get(d, key) {
                None | Some("") => {}
                Some(v) => {
                    let dur =
                        parse_go_duration(v).map_err(|why| ConfigError::new(NAME, key, why))?;
                    if dur.is_zero() {
                        return Err(ConfigError::new(NAME, key, "must be positive"));
                    }
                    *target = dur;
                }
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::data;

    #[test]
    fn defaults_and_values() {
        assert_eq!(
            RouseConfig::from_data(&data(&[])).unwrap(),
            RouseConfig::default()
        );
        let c = RouseConfig::from_data(&data(&[
            ("max-services", "disabled"),
            ("max-services-per-namespace", "3"),
            ("api-body-timeout", "2s"),
        ]))
        .unwrap();
        assert_eq!(c.max_services, None);
        assert_eq!(c.max_services_per_namespace, Some(3));
        assert_eq!(c.api_body_timeout, Duration::from_secs(2));
        let e = RouseConfig::from_data(&data(&[("max-services", "-1")])).unwrap_err();
        assert_eq!(e.key, "max-services");
        let e = RouseConfig::from_data(&data(&[("api-body-timeout", "0s")])).unwrap_err();
        assert_eq!(e.reason, "must be positive");
        assert!(RouseConfig::from_data(&data(&[("max-service", "1")])).is_err());
    }
}

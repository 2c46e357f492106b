//! `config-gc`: how long and how many inactive revisions are kept.

use super::{ConfigData, ConfigError, check_keys, get, parse_i64};
use crate::duration::parse_go_duration;

/// The ConfigMap's name.
pub const NAME: &str = "config-gc";

/// Parsed `config-gc`. Durations in seconds; `None` means "disabled".
#[derive(Debug, Clone, PartialEq)]
pub struct GcConfig {
    pub retain_since_create_time: Option<u64>,
    pub retain_since_last_active_time: Option<u64>,
    pub min_non_active_revisions: i64,
    pub max_non_active_revisions: Option<i64>,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            retain_since_create_time: Some(48 * 3600),
            retain_since_last_active_time: Some(15 * 3600),
            min_non_active_revisions: 20,
            max_non_active_revisions: Some(1000),
        }
    }
}

const KEYS: &[&str] = &[
    "max-non-active-revisions",
    "min-non-active-revisions",
    "retain-since-create-time",
    "retain-since-last-active-time",
];

impl GcConfig {
    /// Parses `config-gc`'s data: durations or `disabled`, counts or `disabled`.
    pub fn from_data(d: &ConfigData) -> Result<Self, ConfigError> {
        check_keys(NAME, d, KEYS)?;
        let mut c = Self::default();
        for (key, target) in [
            ("retain-since-create-time", &mut c.retain_since_create_time),
            (
                "retain-since-last-active-time",
                &mut c.retain_since_last_active_time,
            ),
        ] {
            match get(d, key) {
                None | Some("") => {}
                Some(v) if v.eq_ignore_ascii_case("disabled") => *target = None,
                Some(v) => {
                    let dur = parse_go_duration(v).map_err(|why| {
                        ConfigError::new(NAME, key, format!("{why} (want a duration or disabled)"))
                    })?;
                    *target = Some(dur.as_secs());
                }
            }
        }
        match get(d, "min-non-active-revisions") {
            None | Some("") => {}
            Some(v) => c.min_non_active_revisions = parse_i64(NAME, "min-non-active-revisions", v)?,
        }
        match get(d, "max-non-active-revisions") {
            None | Some("") => {}
            Some(v) if v.eq_ignore_ascii_case("disabled") => c.max_non_active_revisions = None,
            Some(v) => {
                let n: u64 = v.parse().map_err(|_| {
                    ConfigError::new(
                        NAME,
                        "max-non-active-revisions",
                        format!("invalid count {v:?} (want a non-negative integer or disabled)"),
                    )
                })?;
                let n = i64::try_from(n).map_err(|_| {
                    ConfigError::new(
                        NAME,
                        "max-non-active-revisions",
                        format!("value should be lower than {}", i64::MAX),
                    )
                })?;
                c.max_non_active_revisions = Some(n);
            }
        }
        if c.min_non_active_revisions < 0 {
            return Err(ConfigError::new(
                NAME,
                "min-non-active-revisions",
                format!("must be non-negative, was: {}", c.min_non_active_revisions),
            ));
        }
        if let Some(max) = c.max_non_active_revisions
            && c.min_non_active_revisions > max
        {
            return Err(ConfigError::new(
                NAME,
                "min-non-active-revisions",
                format!(
                    "min-non-active-revisions({}) must be <= max-non-active-revisions({max})",
                    c.min_non_active_revisions
                ),
            ));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::data;

    #[test]
    fn defaults_and_knative_example() {
        assert_eq!(
            GcConfig::from_data(&data(&[])).unwrap(),
            GcConfig::default()
        );
        let c = GcConfig::from_data(&data(&[
            ("retain-since-create-time", "48h"),
            ("retain-since-last-active-time", "15h"),
            ("min-non-active-revisions", "20"),
            ("max-non-active-revisions", "1000"),
        ]))
        .unwrap();
        assert_eq!(c, GcConfig::default());
    }

    #[test]
    fn disabled_values() {
        let c = GcConfig::from_data(&data(&[
            ("retain-since-create-time", "disabled"),
            ("retain-since-last-active-time", "Disabled"),
            ("max-non-active-revisions", "DISABLED"),
            ("min-non-active-revisions", "0"),
        ]))
        .unwrap();
        assert_eq!(c.retain_since_create_time, None);
        assert_eq!(c.retain_since_last_active_time, None);
        assert_eq!(c.max_non_active_revisions, None);
        assert_eq!(c.min_non_active_revisions, 0);
    }

    #[test]
    fn durations_in_seconds() {
        let c = GcConfig::from_data(&data(&[("retain-since-create-time", "1h30m")])).unwrap();
        assert_eq!(c.retain_since_create_time, Some(5400));
    }

    #[test]
    fn invalid_values() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("retain-since-create-time", "2 days")],
                "config-gc: retain-since-create-time:",
            ),
            (
                &[("retain-since-create-time", "-1h")],
                "config-gc: retain-since-create-time:",
            ),
            (
                &[("max-non-active-revisions", "-1")],
                "config-gc: max-non-active-revisions: invalid count \"-1\" (want a non-negative integer or disabled)",
            ),
            (
                &[("min-non-active-revisions", "-1")],
                "config-gc: min-non-active-revisions: must be non-negative, was: -1",
            ),
            (
                &[
                    ("min-non-active-revisions", "30"),
                    ("max-non-active-revisions", "10"),
                ],
                "config-gc: min-non-active-revisions: min-non-active-revisions(30) must be <= max-non-active-revisions(10)",
            ),
            (
                &[("stale-after", "1h")],
                "config-gc: stale-after: unknown key",
            ),
        ];
        for (pairs, want) in cases {
            let err = GcConfig::from_data(&data(pairs)).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err} does not start with {want}");
        }
    }
}

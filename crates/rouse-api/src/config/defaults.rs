//! `config-defaults`: revision timeouts, container concurrency and other template defaults.

use super::network::{parse_template, render};
use super::{ConfigData, ConfigError, check_keys, get, is_quantity, parse_bool, parse_i64};

/// The ConfigMap's name.
pub const NAME: &str = "config-defaults";

/// Parsed `config-defaults`.
#[derive(Debug, Clone, PartialEq)]
pub struct DefaultsConfig {
    pub revision_timeout_seconds: i64,
    pub max_revision_timeout_seconds: i64,
    pub revision_response_start_timeout_seconds: i64,
    pub revision_idle_timeout_seconds: i64,
    pub container_concurrency: i64,
    pub container_concurrency_max_limit: i64,
    pub allow_container_concurrency_zero: bool,
    /// `None` means "leave the pod spec's value alone" (Knative's `default`).
    pub enable_service_links: Option<bool>,
    /// `container-name-template` (Go template over the parent's metadata, e.g. `{{.Name}}`).
    pub user_container_name_template: String,
    /// `init-container-name-template`.
    pub init_container_name_template: String,
    /// `revision-cpu-request` (a Kubernetes quantity), injected when a container has none.
    pub revision_cpu_request: Option<String>,
    /// `revision-cpu-limit`.
    pub revision_cpu_limit: Option<String>,
    /// `revision-memory-request`.
    pub revision_memory_request: Option<String>,
    /// `revision-memory-limit`.
    pub revision_memory_limit: Option<String>,
    /// `revision-ephemeral-storage-request`.
    pub revision_ephemeral_storage_request: Option<String>,
    /// `revision-ephemeral-storage-limit`.
    pub revision_ephemeral_storage_limit: Option<String>,
}

impl Default for DefaultsConfig {
    fn default() -> Self {
        Self {
            revision_timeout_seconds: 300,
            max_revision_timeout_seconds: 600,
            revision_response_start_timeout_seconds: 300,
            revision_idle_timeout_seconds: 0,
            container_concurrency: 0,
            container_concurrency_max_limit: 1000,
            allow_container_concurrency_zero: true,
            enable_service_links: Some(false),
            user_container_name_template: "user-container".to_string(),
            init_container_name_template: "init-container".to_string(),
            revision_cpu_request: None,
            revision_cpu_limit: None,
            revision_memory_request: None,
            revision_memory_limit: None,
            revision_ephemeral_storage_request: None,
            revision_ephemeral_storage_limit: None,
        }
    }
}

const KEYS: &[&str] = &[
    "allow-container-concurrency-zero",
    "container-concurrency",
    "container-concurrency-max-limit",
    "container-name-template",
    "enable-service-links",
    "init-container-name-template",
    "max-revision-timeout-seconds",
    "revision-cpu-limit",
    "revision-cpu-request",
    "revision-ephemeral-storage-limit",
    "revision-ephemeral-storage-request",
    "revision-idle-timeout-seconds",
    "revision-memory-limit",
    "revision-memory-request",
    "revision-response-start-timeout-seconds",
    "revision-timeout-seconds",
];

/// The metadata fields a container-name template may use.
const NAME_TEMPLATE_FIELDS: &[&str] = &["Name", "Namespace", "GenerateName"];

impl DefaultsConfig {
    /// Parses `config-defaults`' data with Knative's cross-key checks.
    pub fn from_data(d: &ConfigData) -> Result<Self, ConfigError> {
        check_keys(NAME, d, KEYS)?;
        let mut c = Self::default();
        let int = |key: &str, target: &mut i64| -> Result<(), ConfigError> {
            if let Some(v) = get(d, key) {
                *target = parse_i64(NAME, key, v)?;
            }
            Ok(())
        };
        int("revision-timeout-seconds", &mut c.revision_timeout_seconds)?;
        int(
            "max-revision-timeout-seconds",
            &mut c.max_revision_timeout_seconds,
        )?;
        int(
            "revision-idle-timeout-seconds",
            &mut c.revision_idle_timeout_seconds,
        )?;
        int("container-concurrency", &mut c.container_concurrency)?;
        int(
            "container-concurrency-max-limit",
            &mut c.container_concurrency_max_limit,
        )?;
        // Unless given, the response-start default follows the revision timeout.
        c.revision_response_start_timeout_seconds = c.revision_timeout_seconds;
        int(
            "revision-response-start-timeout-seconds",
            &mut c.revision_response_start_timeout_seconds,
        )?;
        if let Some(v) = get(d, "allow-container-concurrency-zero") {
            c.allow_container_concurrency_zero =
                parse_bool(NAME, "allow-container-concurrency-zero", v)?;
        }
        if let Some(v) = get(d, "enable-service-links") {
            c.enable_service_links = match v.to_ascii_lowercase().as_str() {
                "true" => Some(true),
                "false" => Some(false),
                "default" | "" => None,
                _ => {
                    return Err(ConfigError::new(
                        NAME,
                        "enable-service-links",
                        format!("invalid value {v:?} (want true, false or default)"),
                    ));
                }
            };
        }
        for (key, target) in [
            (
                "container-name-template",
                &mut c.user_container_name_template,
            ),
            (
                "init-container-name-template",
                &mut c.init_container_name_template,
            ),
        ] {
            if let Some(v) = get(d, key) {
                parse_template(v, NAME_TEMPLATE_FIELDS)
                    .map_err(|why| ConfigError::new(NAME, key, why))?;
                *target = v.to_string();
            }
        }
        for (key, target) in [
            ("revision-cpu-request", &mut c.revision_cpu_request),
            ("revision-cpu-limit", &mut c.revision_cpu_limit),
            ("revision-memory-request", &mut c.revision_memory_request),
            ("revision-memory-limit", &mut c.revision_memory_limit),
            (
                "revision-ephemeral-storage-request",
                &mut c.revision_ephemeral_storage_request,
            ),
            (
                "revision-ephemeral-storage-limit",
                &mut c.revision_ephemeral_storage_limit,
            ),
        ] {
            if let Some(v) = get(d, key) {
                if !is_quantity(v) {
                    return Err(ConfigError::new(
                        NAME,
                        key,
                        format!("invalid quantity {v:?}"),
                    ));
                }
                *target = Some(v.to_string());
            }
        }
        c.check()?;
        Ok(c)
    }

    /// Knative's consistency checks between keys.
    fn check(&self) -> Result<(), ConfigError> {
        if self.revision_timeout_seconds > self.max_revision_timeout_seconds {
            return Err(ConfigError::new(
                NAME,
                "revision-timeout-seconds",
                format!(
                    "revision-timeout-seconds ({}) cannot be greater than max-revision-timeout-seconds ({})",
                    self.revision_timeout_seconds, self.max_revision_timeout_seconds
                ),
            ));
        }
        for (key, v) in [
            (
                "revision-response-start-timeout-seconds",
                self.revision_response_start_timeout_seconds,
            ),
            (
                "revision-idle-timeout-seconds",
                self.revision_idle_timeout_seconds,
            ),
        ] {
            if v > 0 && v > self.revision_timeout_seconds {
                return Err(ConfigError::new(
                    NAME,
                    key,
                    format!(
                        "{key} ({v}) cannot be greater than revision-timeout-seconds ({})",
                        self.revision_timeout_seconds
                    ),
                ));
            }
        }
        if self.container_concurrency_max_limit < 1 {
            return Err(ConfigError::new(
                NAME,
                "container-concurrency-max-limit",
                format!(
                    "expected 1 <= {} <= {}",
                    self.container_concurrency_max_limit,
                    i32::MAX
                ),
            ));
        }
        if self.container_concurrency < 0
            || self.container_concurrency > self.container_concurrency_max_limit
        {
            return Err(ConfigError::new(
                NAME,
                "container-concurrency",
                format!(
                    "expected 0 <= {} <= {}",
                    self.container_concurrency, self.container_concurrency_max_limit
                ),
            ));
        }
        Ok(())
    }

    /// The default name of a user container, the template applied to the parent's metadata.
    pub fn user_container_name(&self, parent_name: &str, parent_namespace: &str) -> String {
        apply_name_template(
            &self.user_container_name_template,
            parent_name,
            parent_namespace,
        )
    }

    /// The default name of an init container.
    pub fn init_container_name(&self, parent_name: &str, parent_namespace: &str) -> String {
        apply_name_template(
            &self.init_container_name_template,
            parent_name,
            parent_namespace,
        )
    }
}

fn apply_name_template(t: &str, name: &str, namespace: &str) -> String {
    render(t, &[("Name", name), ("Namespace", namespace)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::data;

    #[test]
    fn empty_data_gives_knative_defaults() {
        let c = DefaultsConfig::from_data(&data(&[("_example", "ignored: 1")])).unwrap();
        assert_eq!(c, DefaultsConfig::default());
        assert_eq!(c.revision_timeout_seconds, 300);
        assert_eq!(c.max_revision_timeout_seconds, 600);
        assert_eq!(c.container_concurrency_max_limit, 1000);
        assert_eq!(c.enable_service_links, Some(false));
    }

    #[test]
    fn knative_example_block_parses() {
        let c = DefaultsConfig::from_data(&data(&[
            ("revision-timeout-seconds", "300"),
            ("max-revision-timeout-seconds", "600"),
            ("revision-response-start-timeout-seconds", "300"),
            ("revision-idle-timeout-seconds", "0"),
            ("revision-cpu-request", "400m"),
            ("revision-memory-request", "100M"),
            ("revision-ephemeral-storage-request", "500M"),
            ("revision-cpu-limit", "1000m"),
            ("revision-memory-limit", "200M"),
            ("revision-ephemeral-storage-limit", "750M"),
            ("container-name-template", "user-container"),
            ("init-container-name-template", "init-container"),
            ("container-concurrency", "0"),
            ("container-concurrency-max-limit", "1000"),
            ("allow-container-concurrency-zero", "true"),
            ("enable-service-links", "false"),
        ]))
        .unwrap();
        assert_eq!(c.revision_cpu_request.as_deref(), Some("400m"));
        assert_eq!(c.revision_memory_limit.as_deref(), Some("200M"));
    }

    #[test]
    fn response_start_follows_revision_timeout_unless_given() {
        let c = DefaultsConfig::from_data(&data(&[("revision-timeout-seconds", "100")])).unwrap();
        assert_eq!(c.revision_response_start_timeout_seconds, 100);
        let c = DefaultsConfig::from_data(&data(&[
            ("revision-timeout-seconds", "100"),
            ("revision-response-start-timeout-seconds", "10"),
        ]))
        .unwrap();
        assert_eq!(c.revision_response_start_timeout_seconds, 10);
    }

    #[test]
    fn enable_service_links_is_tri_state() {
        let get = |v: &str| {
            DefaultsConfig::from_data(&data(&[("enable-service-links", v)]))
                .map(|c| c.enable_service_links)
        };
        assert_eq!(get("True"), Ok(Some(true)));
        assert_eq!(get("false"), Ok(Some(false)));
        assert_eq!(get("default"), Ok(None));
        assert!(get("maybe").is_err());
    }

    #[test]
    fn container_name_template_uses_parent_metadata() {
        let c = DefaultsConfig::from_data(&data(&[("container-name-template", "{{.Name}}-main")]))
            .unwrap();
        assert_eq!(c.user_container_name("hello", "default"), "hello-main");
    }

    #[test]
    fn invalid_values_are_refused_with_the_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("revision-timeout-seconds", "ten")],
                "config-defaults: revision-timeout-seconds: invalid integer \"ten\"",
            ),
            (
                &[("revision-timeout-seconds", "700")],
                "config-defaults: revision-timeout-seconds: revision-timeout-seconds (700) cannot be greater than max-revision-timeout-seconds (600)",
            ),
            (
                &[
                    ("revision-timeout-seconds", "100"),
                    ("revision-response-start-timeout-seconds", "200"),
                ],
                "config-defaults: revision-response-start-timeout-seconds: revision-response-start-timeout-seconds (200) cannot be greater than revision-timeout-seconds (100)",
            ),
            (
                &[("revision-idle-timeout-seconds", "301")],
                "config-defaults: revision-idle-timeout-seconds: revision-idle-timeout-seconds (301) cannot be greater than revision-timeout-seconds (300)",
            ),
            (
                &[("container-concurrency-max-limit", "0")],
                "config-defaults: container-concurrency-max-limit: expected 1 <= 0 <= 2147483647",
            ),
            (
                &[("container-concurrency", "1001")],
                "config-defaults: container-concurrency: expected 0 <= 1001 <= 1000",
            ),
            (
                &[("allow-container-concurrency-zero", "yes")],
                "config-defaults: allow-container-concurrency-zero: invalid boolean \"yes\" (want true or false)",
            ),
            (
                &[("revision-cpu-request", "lots")],
                "config-defaults: revision-cpu-request: invalid quantity \"lots\"",
            ),
            (
                &[("container-name-template", "{{.Labels}}")],
                "config-defaults: container-name-template: unsupported template action {{.Labels}} (Rouse supports {{.Name}}, {{.Namespace}}, {{.GenerateName}})",
            ),
            (
                &[("revision-timeout", "300")],
                "config-defaults: revision-timeout: unknown key",
            ),
        ];
        for (pairs, want) in cases {
            let err = DefaultsConfig::from_data(&data(pairs)).unwrap_err();
            assert_eq!(err.to_string(), *want);
        }
    }

    #[test]
    fn quantities() {
        for ok in [
            "400m",
            "1",
            "1.5Gi",
            "100M",
            "2e3",
            "+1",
            "0.5",
            ".5",
            "128974848",
        ] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "1.2.3", "1Q", "1e", "abc", "1 Gi"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}

//! `config-observability`: the queue-proxy's request log (`logging.enable-request-log`,
//! `logging.request-log-template`, `logging.enable-probe-request-log`). The template is parsed
//! here, once, so a bad one is refused with the config. Knative's metrics, tracing and
//! profiling keys are accepted and not acted on.

use std::sync::Arc;

use super::{ConfigData, ConfigError, check_keys, get, parse_bool};
use crate::request_log::Template;

/// The ConfigMap's name.
pub const NAME: &str = "config-observability";

/// The request-log keys.
pub const ENABLE_REQUEST_LOG: &str = "logging.enable-request-log";
pub const REQUEST_LOG_TEMPLATE: &str = "logging.request-log-template";
pub const ENABLE_PROBE_REQUEST_LOG: &str = "logging.enable-probe-request-log";

/// Knative's default request-log template (one JSON object per line).
pub const DEFAULT_REQUEST_LOG_TEMPLATE: &str = r#"{"httpRequest": {"requestMethod": "{{.Request.Method}}", "requestUrl": "{{js .Request.RequestURI}}", "requestSize": "{{.Request.ContentLength}}", "status": {{.Response.Code}}, "responseSize": "{{.Response.Size}}", "userAgent": "{{js .Request.UserAgent}}", "remoteIp": "{{js .Request.RemoteAddr}}", "serverIp": "{{.Revision.PodIP}}", "referer": "{{js .Request.Referer}}", "latency": "{{.Response.Latency}}s", "protocol": "{{.Request.Proto}}"}, "traceId": "{{.TraceID}}"}"#;

/// Parsed `config-observability`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservabilityConfig {
    /// Log each request (not health checks) in the queue-proxy.
    pub enable_request_log: bool,
    /// Log health checks too (with the same template).
    pub enable_probe_request_log: bool,
    /// The line format; `None` when the key was set empty.
    pub request_log_template: Option<Arc<Template>>,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        Self {
            enable_request_log: false,
            enable_probe_request_log: false,
            request_log_template: Some(Arc::new(
                Template::parse(DEFAULT_REQUEST_LOG_TEMPLATE).expect("the default parses"),
            )),
        }
    }
}

/// Knative's keys: the request log's, and those of metrics, tracing and profiling (accepted,
/// not acted on), current and older spellings.
const KEYS: &[&str] = &[
    ENABLE_REQUEST_LOG,
    REQUEST_LOG_TEMPLATE,
    ENABLE_PROBE_REQUEST_LOG,
    "logging.enable-var-log-collection",
    "logging.revision-url-template",
    "metrics-protocol",
    "metrics-endpoint",
    "metrics-export-interval",
    "request-metrics-protocol",
    "request-metrics-endpoint",
    "request-metrics-export-interval",
    "runtime-profiling",
    "runtime-export-interval",
    "tracing-protocol",
    "tracing-endpoint",
    "tracing-sampling-rate",
    "metrics.backend-destination",
    "metrics.request-metrics-backend-destination",
    "metrics.reporting-period-seconds",
    "profiling.enable",
];

impl ObservabilityConfig {
    /// Parses `config-observability`'s data.
    pub fn from_data(d: &ConfigData) -> Result<Self, ConfigError> {
        check_keys(NAME, d, KEYS)?;
        let mut c = Self::default();
        for (key, target) in [
            (ENABLE_REQUEST_LOG, &mut c.enable_request_log),
            (ENABLE_PROBE_REQUEST_LOG, &mut c.enable_probe_request_log),
        ] {
            if let Some(v) = get(d, key).filter(|v| !v.is_empty()) {
                *target = parse_bool(NAME, key, v)?;
            }
        }
        if let Some(text) = d.get(REQUEST_LOG_TEMPLATE) {
            c.request_log_template = if text.is_empty() {
                None
            } else {
                let t = Template::parse(text)
                    .map_err(|e| ConfigError::new(NAME, REQUEST_LOG_TEMPLATE, e.to_string()))?;
                Some(Arc::new(t))
            };
        }
        if (c.enable_request_log || c.enable_probe_request_log) && c.request_log_template.is_none()
        {
            let key = if c.enable_request_log {
                ENABLE_REQUEST_LOG
            } else {
                ENABLE_PROBE_REQUEST_LOG
            };
            return Err(ConfigError::new(
                NAME,
                key,
                format!("is true, but no {REQUEST_LOG_TEMPLATE} was given"),
            ));
        }
        Ok(c)
    }

    /// The template to log requests with, when request logging is on.
    pub fn request_log(&self) -> Option<&Arc<Template>> {
        self.request_log_template
            .as_ref()
            .filter(|_| self.enable_request_log || self.enable_probe_request_log)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::data;

    #[test]
    fn defaults_are_knatives() {
        let c = ObservabilityConfig::from_data(&data(&[])).unwrap();
        assert!(!c.enable_request_log && !c.enable_probe_request_log);
        assert_eq!(
            c.request_log_template.as_ref().unwrap().source(),
            DEFAULT_REQUEST_LOG_TEMPLATE
        );
        assert!(c.request_log().is_none(), "off by default");
        let other_keys = data(&[("profiling.enable", "true"), ("metrics-protocol", "none")]);
        assert!(ObservabilityConfig::from_data(&other_keys).is_ok());
    }

    #[test]
    fn enabled_with_a_template() {
        let c = ObservabilityConfig::from_data(&data(&[
            (ENABLE_REQUEST_LOG, "true"),
            (
                REQUEST_LOG_TEMPLATE,
                "{{.Request.Method}} {{.Response.Code}}",
            ),
        ]))
        .unwrap();
        assert_eq!(
            c.request_log().unwrap().source(),
            "{{.Request.Method}} {{.Response.Code}}"
        );
    }

    #[test]
    fn bad_values_name_the_key_and_reason() {
        for (pairs, want) in [
            (
                vec![(REQUEST_LOG_TEMPLATE, "{{if .X}}")],
                "config-observability: logging.request-log-template: template: at byte 0: \"if\" is not supported",
            ),
            (
                vec![(ENABLE_REQUEST_LOG, "yes")],
                "config-observability: logging.enable-request-log: invalid boolean \"yes\"",
            ),
            (
                vec![(ENABLE_REQUEST_LOG, "true"), (REQUEST_LOG_TEMPLATE, "")],
                "config-observability: logging.enable-request-log: is true, but no logging.request-log-template was given",
            ),
            (
                vec![("logging.enable-request-logs", "true")],
                "config-observability: logging.enable-request-logs: unknown key (did you mean \"logging.enable-request-log\"?)",
            ),
        ] {
            let err = ObservabilityConfig::from_data(&data(&pairs))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(want), "{err}");
        }
    }
}

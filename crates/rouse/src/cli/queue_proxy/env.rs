//! The sidecar's configuration: Knative's queue-proxy environment contract (what the revision
//! reconciler sets on the `queue-proxy` container, see `rouse-kube`'s Deployment builder), and
//! a few `ROUSE_QUEUE_*` variables for what Knative fixes (ports, bind address, quiet period).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rouse_api::config::observability;
use rouse_api::serving::Probe;
use rouse_queue::{
    LogOutput, ProbeSpec, QueueConfig, RequestLogSwitch, RequestLogger, RevisionInfo,
};

/// Knative's fixed ports, the defaults of the `ROUSE_QUEUE_*_PORT` overrides.
pub const DEFAULT_H2C_PORT: u16 = 8013;
/// The admin port (`/wait-for-drain`, `/healthz`).
pub const DEFAULT_ADMIN_PORT: u16 = 8022;
/// The autoscaler's stats port (`/metrics`, protobuf `Stat`).
pub const DEFAULT_METRICS_PORT: u16 = 9090;
/// The request metrics port (Prometheus text).
pub const DEFAULT_USER_METRICS_PORT: u16 = 9091;
/// Knative's drain quiet period.
pub const DEFAULT_QUIET_PERIOD: Duration = Duration::from_secs(30);
/// The drain bound when the revision has no timeout.
const DEFAULT_GRACE: Duration = Duration::from_secs(300);

/// A variable that is missing or wrong: printed as one line, `VAR: problem`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{var}: {problem}")]
pub struct EnvError {
    /// The variable.
    pub var: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

/// Everything the sidecar runs with.
#[derive(Debug, Clone)]
pub struct SidecarEnv {
    /// The queue-proxy behaviour's configuration (app address, concurrency, timeouts, probe).
    pub queue: QueueConfig,
    /// `SERVING_POD`: the pod name the stats carry.
    pub pod: String,
    /// `SERVING_POD_IP`.
    pub pod_ip: IpAddr,
    /// `SERVING_SERVICE` (may be empty).
    pub service: String,
    /// `SERVING_CONFIGURATION`.
    pub configuration: String,
    /// Where every listener binds (`ROUSE_QUEUE_BIND`, default all interfaces).
    pub bind: IpAddr,
    /// `QUEUE_SERVING_PORT`: HTTP/1.1 and h2c.
    pub serving_port: u16,
    /// `ROUSE_QUEUE_H2C_PORT` (default 8013; `off` for none): a second serving listener, as
    /// Knative's queue-proxy serves 8012 and 8013 both. Skipped when equal to the serving port.
    pub h2c_port: Option<u16>,
    /// `QUEUE_SERVING_TLS_PORT`: accepted; TLS is not served yet.
    pub tls_port: Option<u16>,
    /// `ROUSE_QUEUE_ADMIN_PORT` (default 8022).
    pub admin_port: u16,
    /// `ROUSE_QUEUE_METRICS_PORT` (default 9090).
    pub metrics_port: u16,
    /// `ROUSE_QUEUE_USER_METRICS_PORT` (default 9091).
    pub user_metrics_port: u16,
    /// `ROUSE_QUEUE_DRAIN_QUIET_SECONDS` (default 30): after SIGTERM, health checks fail and
    /// requests are still served until this long passes without one.
    pub quiet_period: Duration,
    /// How long in-flight requests get after the quiet period (the revision's timeout, which
    /// is also the pod's termination grace period).
    pub grace: Duration,
    /// `ENABLE_HTTP2_AUTO_DETECTION`: accepted; the app's protocol comes from the serving port.
    pub http2_auto_detection: bool,
}

impl SidecarEnv {
    /// Reads the process environment.
    pub fn from_process() -> Result<SidecarEnv, EnvError> {
        Self::parse(|k| std::env::var(k).ok())
    }

    /// Reads the variables through `get` (tests pass a map).
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<SidecarEnv, EnvError> {
        let required = |var: &'static str| {
            get(var).ok_or_else(|| EnvError {
                var,
                problem: "is required but not set".into(),
            })
        };
        let non_empty = |var: &'static str| {
            let v = required(var)?;
            if v.trim().is_empty() {
                return Err(bad(var, "must not be empty"));
            }
            Ok(v)
        };
        let namespace = non_empty("SERVING_NAMESPACE")?;
        let configuration = required("SERVING_CONFIGURATION")?;
        let revision = non_empty("SERVING_REVISION")?;
        let pod = non_empty("SERVING_POD")?;
        let pod_ip_raw = non_empty("SERVING_POD_IP")?;
        let pod_ip: IpAddr = pod_ip_raw.trim().parse().map_err(|_| {
            bad(
                "SERVING_POD_IP",
                format!("{pod_ip_raw:?} is not an IP address"),
            )
        })?;
        let service = get("SERVING_SERVICE").unwrap_or_default();

        let serving_port = port("QUEUE_SERVING_PORT", &required("QUEUE_SERVING_PORT")?)?;
        let tls_port = match get("QUEUE_SERVING_TLS_PORT") {
            Some(v) if !v.trim().is_empty() => Some(port("QUEUE_SERVING_TLS_PORT", &v)?),
            _ => None,
        };
        let user_port = port("USER_PORT", &required("USER_PORT")?)?;
        if user_port == 0 {
            return Err(bad("USER_PORT", "must not be 0"));
        }
        let cc_raw = required("CONTAINER_CONCURRENCY")?;
        let container_concurrency: u32 = cc_raw.trim().parse().map_err(|_| {
            bad(
                "CONTAINER_CONCURRENCY",
                format!("{cc_raw:?} is not a non-negative whole number"),
            )
        })?;
        let timeout = seconds(
            "REVISION_TIMEOUT_SECONDS",
            &required("REVISION_TIMEOUT_SECONDS")?,
        )?;
        let optional_seconds = |var: &'static str| match get(var) {
            Some(v) if !v.trim().is_empty() => seconds(var, &v),
            _ => Ok(None),
        };
        let response_start_timeout = optional_seconds("REVISION_RESPONSE_START_TIMEOUT_SECONDS")?;
        let idle_timeout = optional_seconds("REVISION_IDLE_TIMEOUT_SECONDS")?;
        let readiness = match get("SERVING_READINESS_PROBE") {
            Some(v) if !v.trim().is_empty() => readiness_probe(&v)?,
            _ => ProbeSpec::default(),
        };
        let flag = |var: &'static str| match get(var) {
            None => Ok(false),
            Some(v) => match v.trim() {
                "" | "false" | "False" | "FALSE" | "0" => Ok(false),
                "true" | "True" | "TRUE" | "1" => Ok(true),
                other => Err(bad(var, format!("{other:?} is not true or false"))),
            },
        };
        let http2_auto_detection = flag("ENABLE_HTTP2_AUTO_DETECTION")?;

        let bind = match get("ROUSE_QUEUE_BIND") {
            Some(v) if !v.trim().is_empty() => v
                .trim()
                .parse()
                .map_err(|_| bad("ROUSE_QUEUE_BIND", format!("{v:?} is not an IP address")))?,
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let port_or = |var: &'static str, default: u16| match get(var) {
            Some(v) if !v.trim().is_empty() => port(var, &v),
            _ => Ok(default),
        };
        let h2c_port = match get("ROUSE_QUEUE_H2C_PORT") {
            Some(v) if v.trim() == "off" => None,
            Some(v) if !v.trim().is_empty() => Some(port("ROUSE_QUEUE_H2C_PORT", &v)?),
            _ => Some(DEFAULT_H2C_PORT),
        };
        let quiet_period = match get("ROUSE_QUEUE_DRAIN_QUIET_SECONDS") {
            Some(v) if !v.trim().is_empty() => {
                seconds("ROUSE_QUEUE_DRAIN_QUIET_SECONDS", &v)?.unwrap_or(Duration::ZERO)
            }
            _ => DEFAULT_QUIET_PERIOD,
        };
        // The revision builder names 8013 as the serving port of an h2c revision: the app
        // speaks HTTP/2 cleartext then.
        let app_h2c = serving_port == DEFAULT_H2C_PORT || flag("ROUSE_QUEUE_USER_H2C")?;

        let mut queue = QueueConfig::new(
            SocketAddr::from((Ipv4Addr::LOCALHOST, user_port)),
            namespace,
            revision,
        );
        queue.h2c = app_h2c;
        queue.container_concurrency = container_concurrency;
        queue.readiness = readiness;
        queue.timeout = timeout;
        queue.response_start_timeout = response_start_timeout;
        queue.idle_timeout = idle_timeout;
        if let Some(v) = get("OBSERVABILITY_CONFIG").filter(|v| !v.trim().is_empty()) {
            queue.request_log = request_log(
                &v,
                RevisionInfo {
                    name: queue.revision.clone(),
                    namespace: queue.namespace.clone(),
                    service: service.clone(),
                    configuration: configuration.clone(),
                    pod_name: pod.clone(),
                    pod_ip: pod_ip.to_string(),
                },
            )?;
        }
        Ok(SidecarEnv {
            queue,
            pod,
            pod_ip,
            service,
            configuration,
            bind,
            serving_port,
            h2c_port,
            tls_port,
            admin_port: port_or("ROUSE_QUEUE_ADMIN_PORT", DEFAULT_ADMIN_PORT)?,
            metrics_port: port_or("ROUSE_QUEUE_METRICS_PORT", DEFAULT_METRICS_PORT)?,
            user_metrics_port: port_or("ROUSE_QUEUE_USER_METRICS_PORT", DEFAULT_USER_METRICS_PORT)?,
            quiet_period,
            grace: timeout.unwrap_or(DEFAULT_GRACE),
            http2_auto_detection,
        })
    }
}

/// `OBSERVABILITY_CONFIG` (Knative's JSON of `config-observability`): the request log to
/// write to stdout, if it is on.
fn request_log(json: &str, revision: RevisionInfo) -> Result<Option<Arc<RequestLogger>>, EnvError> {
    const VAR: &str = "OBSERVABILITY_CONFIG";
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| bad(VAR, format!("not JSON: {e}")))?;
    let mut data = rouse_api::config::ConfigData::new();
    for (field, key) in [
        ("enableRequestLog", observability::ENABLE_REQUEST_LOG),
        (
            "enableProbeRequestLog",
            observability::ENABLE_PROBE_REQUEST_LOG,
        ),
    ] {
        if let Some(on) = v.get(field).and_then(serde_json::Value::as_bool) {
            data.insert(key.to_string(), on.to_string());
        }
    }
    if let Some(t) = v
        .get("requestLogTemplate")
        .and_then(serde_json::Value::as_str)
    {
        data.insert(
            observability::REQUEST_LOG_TEMPLATE.to_string(),
            t.to_string(),
        );
    }
    let cfg = observability::ObservabilityConfig::from_data(&data)
        .map_err(|e| bad(VAR, e.to_string()))?;
    if cfg.request_log().is_none() {
        return Ok(None);
    }
    let switch = RequestLogSwitch::new();
    switch.set(&cfg);
    Ok(Some(Arc::new(RequestLogger::new(
        switch,
        LogOutput::Stdout,
        revision,
    ))))
}

fn bad(var: &'static str, problem: impl Into<String>) -> EnvError {
    EnvError {
        var,
        problem: problem.into(),
    }
}

/// A port number; 0 asks the system for a free one (tests).
fn port(var: &'static str, v: &str) -> Result<u16, EnvError> {
    v.trim()
        .parse()
        .map_err(|_| bad(var, format!("{v:?} is not a port number (0-65535)")))
}

/// Whole seconds; 0 means none.
fn seconds(var: &'static str, v: &str) -> Result<Option<Duration>, EnvError> {
    let n: u64 = v
        .trim()
        .parse()
        .map_err(|_| bad(var, format!("{v:?} is not a whole number of seconds")))?;
    Ok((n > 0).then(|| Duration::from_secs(n)))
}

/// `SERVING_READINESS_PROBE`: a Kubernetes probe as JSON, or (with multi-container probing) a
/// list of them, of which the serving container's (the first) is run.
fn readiness_probe(v: &str) -> Result<ProbeSpec, EnvError> {
    const VAR: &str = "SERVING_READINESS_PROBE";
    let value: serde_json::Value =
        serde_json::from_str(v).map_err(|e| bad(VAR, format!("is not valid JSON: {e}")))?;
    let first = match value {
        serde_json::Value::Array(mut list) if !list.is_empty() => list.swap_remove(0),
        serde_json::Value::Array(_) => return Err(bad(VAR, "is an empty list")),
        other => other,
    };
    let probe: Probe =
        serde_json::from_value(first).map_err(|e| bad(VAR, format!("is not a probe: {e}")))?;
    if probe.exec.is_some() {
        return Err(bad(
            VAR,
            "an exec probe runs in the app's container (the kubelet's), not in the queue-proxy",
        ));
    }
    Ok(rouse_controller::workload::probe_spec(Some(&probe)))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rouse_queue::ProbeAction;

    use super::*;

    fn base() -> HashMap<&'static str, String> {
        [
            ("SERVING_NAMESPACE", "default"),
            ("SERVING_CONFIGURATION", "hello"),
            ("SERVING_REVISION", "hello-00001"),
            ("SERVING_POD", "hello-00001-deployment-abc"),
            ("SERVING_POD_IP", "10.0.0.7"),
            ("QUEUE_SERVING_PORT", "8012"),
            ("USER_PORT", "8080"),
            ("CONTAINER_CONCURRENCY", "2"),
            ("REVISION_TIMEOUT_SECONDS", "300"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect()
    }

    fn parse(m: &HashMap<&'static str, String>) -> Result<SidecarEnv, EnvError> {
        SidecarEnv::parse(|k| m.get(k).cloned())
    }

    #[test]
    fn knatives_contract_with_defaults() {
        let mut m = base();
        m.insert(
            "SERVING_READINESS_PROBE",
            r#"{"httpGet":{"path":"/ready","port":8080},"successThreshold":1}"#.into(),
        );
        m.insert("REVISION_IDLE_TIMEOUT_SECONDS", "0".into());
        m.insert("REVISION_RESPONSE_START_TIMEOUT_SECONDS", "10".into());
        let e = parse(&m).unwrap();
        assert_eq!(e.queue.app_addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(e.queue.container_concurrency, 2);
        assert_eq!(e.queue.timeout, Some(Duration::from_secs(300)));
        assert_eq!(
            e.queue.response_start_timeout,
            Some(Duration::from_secs(10))
        );
        assert_eq!(e.queue.idle_timeout, None);
        assert!(!e.queue.h2c);
        assert!(
            matches!(e.queue.readiness.action, ProbeAction::Http { ref path, .. } if path == "/ready")
        );
        assert_eq!(e.queue.readiness.period, Duration::ZERO);
        assert_eq!(
            (e.admin_port, e.metrics_port, e.user_metrics_port),
            (8022, 9090, 9091)
        );
        assert_eq!(e.h2c_port, Some(8013));
        assert_eq!(e.quiet_period, DEFAULT_QUIET_PERIOD);
    }

    #[test]
    fn observability_config_turns_the_request_log_on() {
        let mut m = base();
        assert!(parse(&m).unwrap().queue.request_log.is_none());
        m.insert(
            "OBSERVABILITY_CONFIG",
            r#"{"enableRequestLog":true,"requestLogTemplate":"{{.Request.Method}}"}"#.into(),
        );
        let log = parse(&m).unwrap().queue.request_log.expect("on");
        assert!(log.is_on());
        m.insert(
            "OBSERVABILITY_CONFIG",
            r#"{"enableRequestLog":false}"#.into(),
        );
        assert!(parse(&m).unwrap().queue.request_log.is_none());
        m.insert(
            "OBSERVABILITY_CONFIG",
            r#"{"enableRequestLog":true,"requestLogTemplate":"{{range .X}}"}"#.into(),
        );
        let err = parse(&m).unwrap_err().to_string();
        assert!(
            err.starts_with("OBSERVABILITY_CONFIG: config-observability: logging.request-log-template: template: at byte 0: \"range\" is not supported"),
            "{err}"
        );
    }

    #[test]
    fn an_h2c_revision_is_served_on_8013() {
        let mut m = base();
        m.insert("QUEUE_SERVING_PORT", "8013".into());
        assert!(parse(&m).unwrap().queue.h2c);
    }

    #[test]
    fn each_problem_names_its_variable() {
        let cases: [(&str, Option<&str>, &str); 7] = [
            (
                "SERVING_REVISION",
                None,
                "SERVING_REVISION: is required but not set",
            ),
            (
                "USER_PORT",
                Some("http"),
                "USER_PORT: \"http\" is not a port number (0-65535)",
            ),
            (
                "USER_PORT",
                Some("70000"),
                "USER_PORT: \"70000\" is not a port number (0-65535)",
            ),
            (
                "CONTAINER_CONCURRENCY",
                Some("-1"),
                "CONTAINER_CONCURRENCY: \"-1\" is not a non-negative whole number",
            ),
            (
                "SERVING_POD_IP",
                Some("pod"),
                "SERVING_POD_IP: \"pod\" is not an IP address",
            ),
            (
                "SERVING_READINESS_PROBE",
                Some("{"),
                "SERVING_READINESS_PROBE: is not valid JSON",
            ),
            (
                "REVISION_TIMEOUT_SECONDS",
                Some("1.5"),
                "REVISION_TIMEOUT_SECONDS: \"1.5\" is not a whole number of seconds",
            ),
        ];
        for (var, value, want) in cases {
            let mut m = base();
            match value {
                Some(v) => m.insert(var, v.to_string()),
                None => m.remove(var),
            };
            let err = parse(&m).unwrap_err().to_string();
            assert!(err.starts_with(want), "{var}={value:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}

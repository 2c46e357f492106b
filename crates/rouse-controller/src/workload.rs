//! Turns a Revision into what the runtime runs: the program, its environment, its probes and
//! the queue-proxy settings in front of it.

use std::path::PathBuf;
use std::time::Duration;

use rouse_api::serving::{Container, LABEL_CONFIGURATION, LABEL_SERVICE, Probe, Revision};
use rouse_queue::{ProbeAction, ProbeSpec};
use rouse_runtime::{ContainerSpec, PullPolicy, QueueTemplate, WorkloadSpec};
use serde_json::Value;

/// Why a revision cannot run locally.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkloadError {
    /// The container names neither an image nor a command.
    #[error("container {0:?} names neither an image nor a command")]
    NothingToRun(String),
    /// A resource limit that is not a Kubernetes quantity.
    #[error("resources.limits.{name}: {value:?} is not a quantity (e.g. 500m, 1, 128Mi)")]
    Quantity { name: String, value: String },
    /// No containers at all.
    #[error("the revision has no container")]
    NoContainer,
    /// An env var needs a Kubernetes source.
    #[error(
        "env var {0:?} uses valueFrom (ConfigMaps, Secrets and the Downward API do not exist locally); give it a literal value"
    )]
    EnvValueFrom(String),
}

/// Builds the runtime's spec for a revision (a container with a `command` runs that program;
/// one naming only an `image` runs the image, in Docker locally or in a pod on Kubernetes).
pub fn workload_for(rev: &Revision) -> Result<WorkloadSpec, WorkloadError> {
    workload_for_runtime(rev, false)
}

/// [`workload_for`] for a runtime that may resolve env `valueFrom` sources itself
/// ([`Runtime::resolves_env_sources`](rouse_runtime::Runtime::resolves_env_sources)): such
/// variables are then left to it, not refused.
pub fn workload_for_runtime(
    rev: &Revision,
    resolves_env_sources: bool,
) -> Result<WorkloadSpec, WorkloadError> {
    let spec = &rev.spec;
    let container = spec.serving_container().ok_or(WorkloadError::NoContainer)?;
    if container.command.is_empty() && container.image.is_empty() {
        return Err(WorkloadError::NothingToRun(container.name.clone()));
    }
    let mut env = Vec::new();
    for e in &container.env {
        match (&e.value, &e.value_from) {
            (_, Some(_)) if resolves_env_sources => {}
            (_, Some(_)) => return Err(WorkloadError::EnvValueFrom(e.name.clone())),
            (v, None) => env.push((e.name.clone(), v.clone().unwrap_or_default())),
        }
    }
    let timeout = Duration::from_secs(spec.timeout_seconds.unwrap_or(300).max(0) as u64);
    let labels = &rev.metadata.labels;
    Ok(WorkloadSpec {
        namespace: rev.metadata.namespace.clone(),
        revision: rev.metadata.name.clone(),
        configuration: labels.get(LABEL_CONFIGURATION).cloned().unwrap_or_default(),
        service: labels.get(LABEL_SERVICE).cloned().unwrap_or_default(),
        command: container.command.clone(),
        args: container.args.clone(),
        env,
        working_dir: (!container.working_dir.is_empty())
            .then(|| PathBuf::from(&container.working_dir)),
        queue: QueueTemplate {
            h2c: spec.is_h2c(),
            container_concurrency: spec.container_concurrency.unwrap_or(0).max(0) as u32,
            readiness: probe_spec(container.readiness_probe.as_ref()),
            revision: rev.metadata.name.clone(),
            namespace: rev.metadata.namespace.clone(),
            timeout: (!timeout.is_zero()).then_some(timeout),
            response_start_timeout: positive_secs(spec.response_start_timeout_seconds),
            idle_timeout: positive_secs(spec.idle_timeout_seconds),
            request_body_buffer: request_body_buffer(rev),
        },
        drain_timeout: timeout,
        liveness: container.liveness_probe.as_ref().map(liveness_spec),
        // The kubelet's defaults are the same for both.
        startup: container.startup_probe.as_ref().map(liveness_spec),
        container: container_spec(rev, container)?,
    })
}

/// The annotation setting how much of a request body is received before the request takes a
/// slot (validated by the API: `"1Mi"`, `"65536"`, `"0"` = stream every body).
pub use rouse_api::serving::ANNOTATION_REQUEST_BODY_BUFFER;

/// The revision's body buffer: its annotation, else the default (1 MiB).
pub(crate) fn request_body_buffer(rev: &Revision) -> u64 {
    let default = rouse_http::DEFAULT_REQUEST_BODY_BUFFER;
    let Some(raw) = rev.metadata.annotations.get(ANNOTATION_REQUEST_BODY_BUFFER) else {
        return default;
    };
    byte_quantity(raw).unwrap_or_else(|| {
        tracing::warn!(
            revision = %rev.metadata.name,
            value = %raw,
            "invalid {ANNOTATION_REQUEST_BODY_BUFFER}; using the default"
        );
        default
    })
}

/// A byte count: a Kubernetes quantity that is a whole number of bytes (`1Mi`, `64k`, `65536`).
fn byte_quantity(raw: &str) -> Option<u64> {
    let bytes = parse_quantity(raw)?;
    (bytes.fract() == 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// The container settings of the serving container, when it names an image; the digest is
/// the one recorded in the revision's status (once resolved, instances run from it).
fn container_spec(rev: &Revision, c: &Container) -> Result<Option<ContainerSpec>, WorkloadError> {
    if c.image.is_empty() {
        return Ok(None);
    }
    let digest = rev
        .status
        .container_statuses
        .iter()
        .find(|s| s.name == c.name && !s.image_digest.is_empty())
        .map(|s| s.image_digest.clone());
    let limits = c.resources.as_ref().map(|r| &r.limits);
    let limit =
        |name: &str, parse: fn(&str) -> Option<f64>| -> Result<Option<f64>, WorkloadError> {
            let Some(v) = limits.and_then(|l| l.get(name)) else {
                return Ok(None);
            };
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            parse(&text).map(Some).ok_or(WorkloadError::Quantity {
                name: name.to_string(),
                value: text,
            })
        };
    let sc = c.security_context.as_ref();
    let pod_sc = rev.spec.security_context.as_ref();
    let id_of = |key: &str| {
        sc.and_then(|s| s.get(key))
            .or_else(|| pod_sc.and_then(|s| s.get(key)))
            .and_then(Value::as_i64)
    };
    let user = match (id_of("runAsUser"), id_of("runAsGroup")) {
        (Some(u), Some(g)) => Some(format!("{u}:{g}")),
        (Some(u), None) => Some(u.to_string()),
        // Docker needs a user to set a group; 0 keeps the image's default user's rights.
        (None, Some(g)) => Some(format!("0:{g}")),
        (None, None) => None,
    };
    let caps = |key: &str| -> Vec<String> {
        sc.and_then(|s| s.pointer(&format!("/capabilities/{key}")))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(Some(ContainerSpec {
        name: c.name.clone(),
        image: c.image.clone(),
        digest,
        pull_policy: match c.image_pull_policy.as_deref() {
            Some("Always") => PullPolicy::Always,
            Some("Never") => PullPolicy::Never,
            _ => PullPolicy::IfNotPresent,
        },
        port: c
            .ports
            .first()
            .and_then(|p| u16::try_from(p.container_port).ok())
            .filter(|p| *p > 0)
            .unwrap_or(8080),
        nano_cpus: limit("cpu", parse_quantity)?.map(|cpus| (cpus * 1e9).round() as i64),
        memory_bytes: limit("memory", parse_quantity)?.map(|b| b.round() as i64),
        user,
        read_only_root: sc
            .and_then(|s| s.get("readOnlyRootFilesystem"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
        cap_add: caps("add"),
        cap_drop: caps("drop"),
    }))
}

/// A Kubernetes quantity as a number: `500m` = 0.5, `2` = 2, `128Mi` = 134217728,
/// `1G` = 1e9, `1e3` = 1000.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let q = q.strip_prefix('+').unwrap_or(q);
    let suffixes: [(&str, f64); 15] = [
        ("Ki", 1024.0),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let (num, factor) = suffixes
        .iter()
        .find_map(|(s, f)| q.strip_suffix(s).map(|n| (n, *f)))
        .unwrap_or((q, 1.0));
    let n: f64 = num.parse().ok()?;
    (n.is_finite() && n >= 0.0).then_some(n * factor)
}

/// A timeout in seconds, where absent or 0 means none.
fn positive_secs(v: Option<i64>) -> Option<Duration> {
    v.filter(|s| *s > 0).map(|s| Duration::from_secs(s as u64))
}

/// The queue-proxy's readiness probe from the container's (TCP when none is given). Any port
/// the probe names means the instance's port locally (validation already requires the
/// container port). `periodSeconds` 0 (the default) is Knative's aggressive probing.
pub fn probe_spec(probe: Option<&Probe>) -> ProbeSpec {
    let Some(p) = probe else {
        return ProbeSpec::default();
    };
    from_probe(p, Duration::ZERO)
}

/// The runtime's liveness (or startup) probe from the container's `livenessProbe`
/// (`startupProbe`), with Kubernetes' defaults (every 10 s, 1 s per try, restart after 3
/// failures in a row).
pub fn liveness_spec(probe: &Probe) -> ProbeSpec {
    from_probe(probe, Duration::from_secs(10))
}

fn from_probe(p: &Probe, default_period: Duration) -> ProbeSpec {
    let secs = |v: Option<i32>, d: Duration| v.map_or(d, |s| Duration::from_secs(s.max(0) as u64));
    ProbeSpec {
        action: probe_action(p),
        period: secs(p.period_seconds, default_period),
        timeout: secs(p.timeout_seconds, Duration::from_secs(1)),
        success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
        failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        initial_delay: secs(p.initial_delay_seconds, Duration::ZERO),
    }
}

/// The check a probe makes; TCP when it names none (validation refuses that anyway).
fn probe_action(p: &Probe) -> ProbeAction {
    if let Some(h) = &p.http_get {
        ProbeAction::Http {
            path: if h.path.is_empty() {
                "/".to_string()
            } else {
                h.path.clone()
            },
            headers: h
                .http_headers
                .iter()
                .map(|x| (x.name.clone(), x.value.clone()))
                .collect(),
        }
    } else if let Some(g) = &p.grpc {
        ProbeAction::Grpc {
            service: g.service.clone().unwrap_or_default(),
        }
    } else if let Some(e) = &p.exec {
        // The runtime adds the instance's environment and working directory.
        ProbeAction::Exec {
            command: e.command.clone(),
            env: Vec::new(),
            working_dir: None,
        }
    } else {
        ProbeAction::Tcp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_value_from_is_refused_unless_the_runtime_resolves_it() {
        use rouse_api::meta::Resource;
        let mut rev = Revision::new_named("default", "env-00001");
        rev.spec = serde_json::from_value(serde_json::json!({"containers": [{
            "image": "example.org/app",
            "env": [{"name": "FROM", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}},
                    {"name": "PLAIN", "value": "v"}],
        }]}))
        .unwrap();
        assert!(matches!(
            workload_for(&rev),
            Err(WorkloadError::EnvValueFrom(name)) if name == "FROM"
        ));
        let spec = workload_for_runtime(&rev, true).unwrap();
        assert_eq!(spec.env, [("PLAIN".to_string(), "v".to_string())]);
    }

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("128Mi"), Some(134_217_728.0));
        assert_eq!(parse_quantity("1G"), Some(1e9));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("+1Ei"), Some(1024f64.powi(6)));
        assert_eq!(parse_quantity("2P"), Some(2e15));
        assert_eq!(parse_quantity("lots"), None);
        assert_eq!(parse_quantity("-1"), None);
    }
    use rouse_api::serving::{ExecAction, GrpcAction, HttpGetAction, HttpHeader, TcpSocketAction};

    #[test]
    fn readiness_defaults_to_aggressive_tcp() {
        assert_eq!(probe_spec(None), ProbeSpec::default());
        let tcp = Probe {
            tcp_socket: Some(TcpSocketAction::default()),
            ..Probe::default()
        };
        let s = probe_spec(Some(&tcp));
        assert_eq!(s.action, ProbeAction::Tcp);
        assert_eq!(s.period, Duration::ZERO);
        assert_eq!(s.timeout, Duration::from_secs(1));
        assert_eq!((s.success_threshold, s.failure_threshold), (1, 3));
    }

    #[test]
    fn readiness_maps_http_grpc_and_exec_with_their_timings() {
        let http = Probe {
            http_get: Some(HttpGetAction {
                path: "healthz".into(),
                http_headers: vec![HttpHeader {
                    name: "X-Probe".into(),
                    value: "1".into(),
                }],
                ..HttpGetAction::default()
            }),
            period_seconds: Some(5),
            timeout_seconds: Some(2),
            failure_threshold: Some(4),
            success_threshold: Some(2),
            initial_delay_seconds: Some(3),
            ..Probe::default()
        };
        assert_eq!(
            probe_spec(Some(&http)),
            ProbeSpec {
                action: ProbeAction::Http {
                    path: "healthz".into(),
                    headers: vec![("X-Probe".into(), "1".into())],
                },
                period: Duration::from_secs(5),
                timeout: Duration::from_secs(2),
                success_threshold: 2,
                failure_threshold: 4,
                initial_delay: Duration::from_secs(3),
            }
        );
        let grpc = |service: Option<&str>| Probe {
            grpc: Some(GrpcAction {
                port: 8080,
                service: service.map(String::from),
            }),
            ..Probe::default()
        };
        assert_eq!(
            probe_spec(Some(&grpc(None))).action,
            ProbeAction::Grpc {
                service: String::new()
            }
        );
        assert_eq!(
            probe_spec(Some(&grpc(Some("shop.Cart")))).action,
            ProbeAction::Grpc {
                service: "shop.Cart".into()
            }
        );
        let exec = Probe {
            exec: Some(ExecAction {
                command: vec!["cat".into(), "/tmp/healthy".into()],
            }),
            ..Probe::default()
        };
        assert_eq!(
            probe_spec(Some(&exec)).action,
            ProbeAction::Exec {
                command: vec!["cat".into(), "/tmp/healthy".into()],
                env: vec![],
                working_dir: None,
            }
        );
    }

    #[test]
    fn liveness_takes_kubernetes_defaults() {
        let p = Probe {
            http_get: Some(HttpGetAction::default()),
            ..Probe::default()
        };
        assert_eq!(
            liveness_spec(&p),
            ProbeSpec {
                action: ProbeAction::Http {
                    path: "/".into(),
                    headers: vec![],
                },
                period: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3,
                initial_delay: Duration::ZERO,
            }
        );
        let p = Probe {
            tcp_socket: Some(TcpSocketAction::default()),
            period_seconds: Some(1),
            failure_threshold: Some(1),
            ..Probe::default()
        };
        let s = liveness_spec(&p);
        assert_eq!((s.period, s.failure_threshold), (Duration::from_secs(1), 1));
    }
}

#[cfg(test)]
mod body_buffer_tests {
    use super::byte_quantity;

    #[test]
    fn byte_quantities_parse() {
        assert_eq!(byte_quantity("1Mi"), Some(1 << 20));
        assert_eq!(byte_quantity("0"), Some(0));
        assert_eq!(byte_quantity("64k"), Some(64_000));
        assert_eq!(byte_quantity("65536"), Some(65536));
        assert_eq!(byte_quantity("1.5Mi"), Some(1_572_864));
        assert_eq!(byte_quantity("0.5"), None);
        assert_eq!(byte_quantity("-1"), None);
        assert_eq!(byte_quantity("99999999999Gi"), None);
    }
}

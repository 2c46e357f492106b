//! Turns a Revision into what the runtime runs: the program, its environment, its probes and
//! the queue-proxy settings in front of it.

use std::path::PathBuf;
use std::time::Duration;

use rouse_api::serving::{LABEL_CONFIGURATION, LABEL_SERVICE, Probe, Revision};
use rouse_queue::{ProbeAction, ProbeSpec};
use rouse_runtime::{QueueTemplate, WorkloadSpec};

/// Why a revision cannot run as local processes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkloadError {
    /// The container names an image but no command.
    #[error(
        "container {container:?} names only an image ({image}); the process runtime runs programs: set `command` (and `args`) to the program to run, or use the Docker runtime"
    )]
    ImageOnly { container: String, image: String },
    /// No containers at all.
    #[error("the revision has no container")]
    NoContainer,
    /// An env var needs a Kubernetes source.
    #[error(
        "env var {0:?} uses valueFrom, which the process runtime cannot resolve; give it a literal value"
    )]
    EnvValueFrom(String),
}

/// Builds the runtime's spec for a revision; `runs_images`: the runtime runs container
/// images ([`rouse_runtime::Runtime::runs_images`]), so a container needs no `command`.
pub fn workload_for(rev: &Revision, runs_images: bool) -> Result<WorkloadSpec, WorkloadError> {
    let spec = &rev.spec;
    let container = spec.serving_container().ok_or(WorkloadError::NoContainer)?;
    if container.command.is_empty() && !runs_images {
        return Err(WorkloadError::ImageOnly {
            container: container.name.clone(),
            image: container.image.clone(),
        });
    }
    let mut env = Vec::new();
    for e in &container.env {
        match (&e.value, &e.value_from) {
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
    })
}

/// The annotation setting how much of a request body is received before the request takes a
/// slot (`"1Mi"`, `"65536"`, `"0"` = stream every body).
pub const ANNOTATION_REQUEST_BODY_BUFFER: &str = "rouse.dev/request-body-buffer";

/// The revision's body buffer: its annotation, else the default (1 MiB).
pub(crate) fn request_body_buffer(rev: &Revision) -> u64 {
    let default = rouse_queue::http::DEFAULT_REQUEST_BODY_BUFFER;
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

/// A byte count as a whole number with an optional binary or decimal suffix (`1Mi`, `64k`).
fn byte_quantity(raw: &str) -> Option<u64> {
    let raw = raw.trim();
    let end = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (num, suffix) = raw.split_at(end);
    let factor: u64 = match suffix {
        "" => 1,
        "k" => 1000,
        "M" => 1000 * 1000,
        "G" => 1000 * 1000 * 1000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return None,
    };
    num.parse::<u64>().ok()?.checked_mul(factor)
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

/// The runtime's liveness probe from the container's `livenessProbe`, with Kubernetes'
/// defaults (every 10 s, 1 s per try, restart after 3 failures in a row).
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
        assert_eq!(byte_quantity("1.5Mi"), None);
        assert_eq!(byte_quantity("-1"), None);
        assert_eq!(byte_quantity("99999999999Gi"), None);
    }
}

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

/// Builds the runtime's spec for a revision.
pub fn workload_for(rev: &Revision) -> Result<WorkloadSpec, WorkloadError> {
    let spec = &rev.spec;
    let container = spec.serving_container().ok_or(WorkloadError::NoContainer)?;
    if container.command.is_empty() {
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
        },
        drain_timeout: timeout,
    })
}

/// A timeout in seconds, where absent or 0 means none.
fn positive_secs(v: Option<i64>) -> Option<Duration> {
    v.filter(|s| *s > 0).map(|s| Duration::from_secs(s as u64))
}

/// The queue-proxy's readiness probe from the container's (TCP when none is given).
pub fn probe_spec(probe: Option<&Probe>) -> ProbeSpec {
    let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
    let action = match probe.and_then(|p| p.http_get.as_ref()) {
        Some(h) => ProbeAction::Http {
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
        },
        None => ProbeAction::Tcp,
    };
    let Some(p) = probe else {
        return ProbeSpec {
            action,
            period: Duration::ZERO,
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 3,
            initial_delay: Duration::ZERO,
        };
    };
    ProbeSpec {
        action,
        period: secs(p.period_seconds, 0),
        timeout: secs(p.timeout_seconds, 1),
        success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
        failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        initial_delay: secs(p.initial_delay_seconds, 0),
    }
}

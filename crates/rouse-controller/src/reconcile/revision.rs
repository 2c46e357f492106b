//! Revision → its PodAutoscaler and ServerlessService, and the revision's conditions from its
//! instances: Ready once the instances pass readiness; failed with the exit code or reason when
//! a container exits or cannot start before the revision ever became ready.

use std::time::Duration;

use rouse_api::autoscaling::{ObjectReference, PodAutoscaler};
use rouse_api::clock::{now_rfc3339, parse_rfc3339};
use rouse_api::condition::{ConditionStatus, Conditions};
use rouse_api::duration::parse_go_duration;
use rouse_api::meta::Resource;
use rouse_api::networking::{ServerlessService, SksMode};
use rouse_api::serving::{ANNOTATION_PROGRESS_DEADLINE, ContainerStatus, Revision, RevisionStatus};
use rouse_runtime::{ImageState, Termination};

use super::{Requeue, ensure_child};
use crate::workload::workload_for_runtime;
use crate::{Context, ReconcileError};

/// How often a deploying revision's instance report (state, last output) is refreshed.
const DEPLOYING_REFRESH: Duration = Duration::from_secs(5);
/// How soon an image that could not be found or pulled is looked for again.
const IMAGE_RETRY: Duration = Duration::from_secs(15);
/// Output lines of a starting instance quoted in its revision's status.
const TAIL_LINES: usize = 3;

/// Knative's default `progress-deadline` (config-deployment).
const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(600);

pub(super) fn reconcile(ctx: &Context, ns: &str, name: &str) -> Result<Requeue, ReconcileError> {
    let Some(rev) = ctx.client.get::<Revision>(ns, name)? else {
        ctx.runtime.remove(ns, name);
        ctx.networking.remove_revision(ns, name);
        return Ok(None);
    };
    let mut status = rev.status.clone();
    status.observed_generation = rev.metadata.generation;

    let workload = match workload_for_runtime(&rev, ctx.runtime.resolves_env_sources()) {
        Ok(w) => w,
        Err(e) => {
            status.mark_false("ContainerHealthy", "InvalidWorkload", &e.to_string());
            status.mark_false("ResourcesAvailable", "InvalidWorkload", &e.to_string());
            status.derive_ready(&["ResourcesAvailable", "ContainerHealthy"]);
            return write(ctx, &rev, status, None);
        }
    };
    // Like Knative, the image is resolved to a digest before anything runs, and the digest
    // recorded: the revision's instances run from it, whatever the tag names later.
    match ctx.runtime.image(&workload) {
        ImageState::NotImage => {}
        ImageState::Resolved(digest) => {
            let name = workload.container.as_ref().map(|c| c.name.clone());
            let want = vec![ContainerStatus {
                name: name.unwrap_or_default(),
                image_digest: digest,
            }];
            if status.container_statuses != want {
                status.container_statuses = want;
            }
        }
        ImageState::Resolving => {
            status.mark_unknown("ContainerHealthy", "ResolvingDigests", "");
            status.mark_unknown("ResourcesAvailable", "ResolvingDigests", "");
            status.derive_ready(&["ResourcesAvailable", "ContainerHealthy"]);
            return write(ctx, &rev, status, None);
        }
        ImageState::Failed { reason, message } => {
            status.mark_false("ContainerHealthy", &reason, &message);
            status.mark_false("ResourcesAvailable", &reason, &message);
            status.derive_ready(&["ResourcesAvailable", "ContainerHealthy"]);
            // A failed resolution is tried again a while later.
            return write(ctx, &rev, status, Some(IMAGE_RETRY));
        }
    }
    ensure_autoscaler(ctx, &rev)?;
    ensure_sks(ctx, &rev)?;

    let pa = ctx.client.get::<PodAutoscaler>(ns, name)?;
    let initialized = pa
        .as_ref()
        .is_some_and(|p| p.status.is_true("ScaleTargetInitialized"));
    let mut requeue = None;
    let stuck = pa
        .as_ref()
        .and_then(|p| stuck_activation(p, progress_deadline(&rev)));
    if let Some(Err(left)) = stuck {
        requeue = Some(left);
    }
    if let Some(Ok(for_secs)) = stuck {
        // Woken from zero but no instance became ready in time: say why, like a deployment
        // that exceeded its progress deadline.
        let why = ctx
            .runtime
            .instances(ns, name)
            .into_iter()
            .find_map(|i| i.last_termination)
            .map(|t| format!(" Last exit: {}", describe_termination(&t).1))
            .unwrap_or_default();
        status.mark_false(
            "ResourcesAvailable",
            "ProgressDeadlineExceeded",
            &format!("Activation did not bring up a ready instance within {for_secs}s.{why}"),
        );
    } else if initialized {
        status.mark_true("ResourcesAvailable");
        status.mark_true("ContainerHealthy");
    } else if let Some(why) = ctx.runtime.scale_refusal(ns, name) {
        // Not started for the limit on instances; it starts once there is room.
        status.mark_false("ResourcesAvailable", "InstanceLimitReached", &why);
    } else if let Some(t) = ctx
        .runtime
        .instances(ns, name)
        .into_iter()
        .filter_map(|i| i.last_termination)
        .next()
    {
        let (reason, message) = describe_termination(&t);
        status.mark_false("ContainerHealthy", &reason, &message);
        status.mark_unknown("ResourcesAvailable", "Deploying", "");
    } else {
        let deadline = progress_deadline(&rev);
        let age = age_of(&rev);
        if age >= deadline {
            status.mark_false(
                "ResourcesAvailable",
                "ProgressDeadlineExceeded",
                "Initial scale was never achieved",
            );
        } else {
            // Say what the instances are doing, refreshed while deploying, so a wait shows
            // an app that never listens instead of a bare "Deploying".
            let starting = starting_instances(ctx, ns, name);
            status.mark_unknown("ResourcesAvailable", "Deploying", &starting);
            if status.get_condition("ContainerHealthy").is_none() {
                status.mark_unknown("ContainerHealthy", "Deploying", "");
            }
            requeue = Some(if ctx.runtime.instances(ns, name).is_empty() {
                deadline - age
            } else {
                (deadline - age).min(DEPLOYING_REFRESH)
            });
        }
    }
    if let Some(pa) = &pa {
        if let Some(active) = pa.status.get_condition("Active") {
            status.set_condition("Active", active.status, &active.reason, &active.message);
        }
        status.actual_replicas = pa.status.actual_scale;
        status.desired_replicas = pa.status.desired_scale;
    }
    status.derive_ready(&["ResourcesAvailable", "ContainerHealthy"]);
    write(ctx, &rev, status, requeue)
}

fn write(
    ctx: &Context,
    rev: &Revision,
    status: RevisionStatus,
    requeue: Requeue,
) -> Result<Requeue, ReconcileError> {
    if status != rev.status {
        let mut updated = rev.clone();
        updated.status = status;
        ctx.client.update_status(&updated)?;
    }
    Ok(requeue)
}

/// What the revision's live instances are doing while none is ready yet: pid, `PORT`, that
/// the readiness probe has not passed, and the last lines of output. Empty with no instance.
fn starting_instances(ctx: &Context, ns: &str, name: &str) -> String {
    let mut parts = Vec::new();
    for i in ctx.runtime.instances(ns, name) {
        let Some(pid) = i.pid else { continue };
        let mut part = format!(
            "Instance {} started (pid {pid}, PORT {}); its readiness probe has not passed yet.",
            i.id, i.app_port
        );
        let tail = log_tail(&i.log_path, TAIL_LINES);
        if !tail.is_empty() {
            part.push_str(&format!(" Last output: {tail}"));
        }
        parts.push(part);
    }
    parts.join(" ")
}

/// The last `lines` non-empty lines of a log file, joined with " | " (empty when unreadable).
fn log_tail(path: &std::path::Path, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    const MAX: u64 = 4096;
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if f.seek(SeekFrom::Start(len.saturating_sub(MAX))).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if f.take(MAX).read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

/// Knative's reason and message for a container that stopped: `ExitCode<N>` and
/// `Container failed with: <its last output>`.
fn describe_termination(t: &Termination) -> (String, String) {
    let reason = match (t.exit_code, t.signal) {
        (Some(code), _) => format!("ExitCode{code}"),
        (None, Some(sig)) => format!("ExitCode{}", 128 + sig),
        (None, None) => t.reason.clone(),
    };
    let detail = if t.message.trim().is_empty() {
        t.reason.clone()
    } else {
        t.message.trim().to_string()
    };
    (reason, format!("Container failed with: {detail}"))
}

/// For a PA that has been activating (`Active=Unknown`) since a known time: `Ok(seconds)` once
/// that lasted past `deadline`, else `Err(time left)`.
fn stuck_activation(pa: &PodAutoscaler, deadline: Duration) -> Option<Result<u64, Duration>> {
    let active = pa.status.get_condition("Active")?;
    if active.status != ConditionStatus::Unknown || active.reason != "Queued" {
        return None;
    }
    let since = parse_rfc3339(&active.last_transition_time)?;
    let now = parse_rfc3339(&now_rfc3339())?;
    let waited = Duration::from_secs(now.saturating_sub(since));
    Some(if waited >= deadline {
        Ok(waited.as_secs())
    } else {
        Err(deadline - waited + Duration::from_secs(1))
    })
}

pub(super) fn progress_deadline(rev: &Revision) -> Duration {
    rev.metadata
        .annotations
        .get(ANNOTATION_PROGRESS_DEADLINE)
        .and_then(|v| parse_go_duration(v).ok())
        .unwrap_or(DEFAULT_PROGRESS_DEADLINE)
}

fn age_of(rev: &Revision) -> Duration {
    let now = parse_rfc3339(&now_rfc3339()).unwrap_or(0);
    let created = parse_rfc3339(&rev.metadata.creation_timestamp).unwrap_or(now);
    Duration::from_secs(now.saturating_sub(created))
}

fn ensure_autoscaler(ctx: &Context, rev: &Revision) -> Result<(), ReconcileError> {
    let (ns, name) = (&rev.metadata.namespace, &rev.metadata.name);
    let mut want = PodAutoscaler::new_named(ns, name);
    want.metadata.labels = rev.metadata.labels.clone();
    want.metadata.annotations = rev.metadata.annotations.clone();
    want.metadata.owner_references = vec![rev.owner_ref()];
    want.spec.container_concurrency = Some(rev.spec.container_concurrency.unwrap_or(0));
    want.spec.scale_target_ref = ObjectReference {
        api_version: "apps/v1".to_string(),
        kind: "Deployment".to_string(),
        name: format!("{name}-deployment"),
    };
    want.spec.protocol_type = protocol(rev).to_string();
    want.spec.reachability = "Reachable".to_string();
    // What the defaulting webhook adds on Kubernetes (class and metric annotations), so the
    // stored PodAutoscaler matches what is wanted and is not rewritten on every pass.
    rouse_api::defaults::default_pod_autoscaler(&mut want, None, &ctx.config.get());
    ensure_child(ctx, &rev.metadata.uid, want).map(|_| ())
}

fn ensure_sks(ctx: &Context, rev: &Revision) -> Result<(), ReconcileError> {
    let (ns, name) = (&rev.metadata.namespace, &rev.metadata.name);
    let mut want = ServerlessService::new_named(ns, name);
    want.metadata.labels = rev.metadata.labels.clone();
    want.metadata.owner_references = vec![rev.owner_ref()];
    // Like Knative, a new revision starts behind the activator until it has capacity.
    want.spec.mode = SksMode::Proxy;
    want.spec.object_ref = ObjectReference {
        api_version: "apps/v1".to_string(),
        kind: "Deployment".to_string(),
        name: format!("{name}-deployment"),
    };
    want.spec.protocol_type = protocol(rev).to_string();
    ensure_child(ctx, &rev.metadata.uid, want).map(|_| ())
}

fn protocol(rev: &Revision) -> &'static str {
    if rev.spec.is_h2c() { "h2c" } else { "http1" }
}

//! `rouse apply -f FILE|DIR|- [--wait] [--timeout DURATION]`: create or replace each object,
//! then optionally wait until every applied Service, Configuration and Route is Ready.

use std::path::PathBuf;
use std::time::Duration;

use http::Method;
use rouse_api::Kind;
use serde_json::Value;
use tokio::time::Instant;

use super::client::{ApiClient, ClientError};
use super::gateway::{display_url, gateway_port};
use super::manifest::{self, Manifest};
use super::table::{arr_at, condition, container_failure, human_duration, str_at};
use super::{ApiTarget, Reported, kind_ref, parse_duration};
use crate::api::paths;

/// `rouse apply` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ApplyArgs {
    /// A manifest file, a directory of them, or `-` for stdin; repeatable.
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        value_name = "FILE|DIR|-"
    )]
    pub files: Vec<PathBuf>,
    /// Wait until every applied Service, Configuration and Route is Ready.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits (a Go duration). The default outlasts Knative's 600 s
    /// progress deadline, so a revision that never becomes ready is reported as failed, with
    /// why, instead of the wait timing out first.
    #[arg(long, default_value = "11m", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    #[command(flatten)]
    pub target: ApiTarget,
}

/// What applying one object did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// How many times a lost race (a concurrent write or create) is retried.
const ATTEMPTS: usize = 5;
/// How often `--wait` polls.
const POLL: Duration = Duration::from_millis(500);
/// How often `--wait` says what it is still waiting for (on stderr) when nothing changed.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Runs `rouse apply`.
pub async fn run(client: &ApiClient, namespace: &str, args: &ApplyArgs) -> anyhow::Result<()> {
    let manifests = manifest::load(&args.files).map_err(anyhow::Error::msg)?;
    if manifests.is_empty() {
        anyhow::bail!("no objects passed to apply");
    }
    let mut failed = false;
    let mut applied = Vec::new();
    for m in &manifests {
        match apply_one(client, namespace, m).await {
            Ok((outcome, obj)) => {
                let name = str_at(&obj, "/metadata/name").to_string();
                let ns = str_at(&obj, "/metadata/namespace").to_string();
                println!("{}/{name} {}", kind_ref(m.kind), outcome.as_str());
                applied.push((m.kind, ns, name));
            }
            Err(e @ ClientError::Unreachable { .. }) => return Err(e.into()),
            Err(e) => {
                failed = true;
                let name = str_at(&m.value, "/metadata/name");
                match e {
                    ClientError::Server {
                        reason, message, ..
                    } => eprintln!(
                        "Error from server ({reason}): error when applying {}/{name} from \"{}\": {message}",
                        kind_ref(m.kind),
                        m.source
                    ),
                    other => eprintln!(
                        "error: applying {}/{name} from \"{}\": {other}",
                        kind_ref(m.kind),
                        m.source
                    ),
                }
            }
        }
    }
    if args.wait {
        let targets: Vec<_> = applied
            .into_iter()
            .filter(|(k, _, _)| {
                matches!(
                    k,
                    Kind::Service | Kind::Configuration | Kind::Route | Kind::DomainMapping
                )
            })
            .collect();
        if !wait_ready(client, &targets, args.timeout).await? {
            failed = true;
        }
    }
    if failed { Err(Reported.into()) } else { Ok(()) }
}

/// Creates the object, or replaces it when it exists. Returns what happened and the stored
/// object.
pub async fn apply_one(
    client: &ApiClient,
    namespace: &str,
    m: &Manifest,
) -> Result<(Outcome, Value), ClientError> {
    let mut obj = m.value.clone();
    // Apply means "make it look like this": a copy of another incarnation's stamps (from
    // `get -o yaml`) must not pin the write to it, and status is the controller's.
    if let Some(map) = obj.as_object_mut() {
        map.remove("status");
    }
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in [
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "managedFields",
            "selfLink",
        ] {
            meta.remove(f);
        }
    }
    let ns = match str_at(&obj, "/metadata/namespace") {
        "" => namespace.to_string(),
        ns => ns.to_string(),
    };
    obj["metadata"]["namespace"] = Value::String(ns.clone());
    let name = str_at(&obj, "/metadata/name").to_string();
    let collection = paths::collection(m.kind, Some(&ns));
    if name.is_empty() {
        // generateName: every apply creates a new object.
        let created = client.json(Method::POST, &collection, Some(&obj)).await?;
        return Ok((Outcome::Created, created));
    }
    let item = paths::item(m.kind, &ns, &name);
    let mut last = None;
    for _ in 0..ATTEMPTS {
        match client.get(&item).await {
            Err(e) if e.is_not_found() => {
                match client.json(Method::POST, &collection, Some(&obj)).await {
                    Ok(created) => return Ok((Outcome::Created, created)),
                    Err(e) if e.is_already_exists() => last = Some(e),
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
            Ok(existing) => {
                let rv = str_at(&existing, "/metadata/resourceVersion").to_string();
                let mut put = obj.clone();
                put["metadata"]["resourceVersion"] = Value::String(rv.clone());
                match client.json(Method::PUT, &item, Some(&put)).await {
                    Ok(updated) => {
                        let outcome = if str_at(&updated, "/metadata/resourceVersion") == rv {
                            Outcome::Unchanged
                        } else {
                            Outcome::Configured
                        };
                        return Ok((outcome, updated));
                    }
                    Err(e) if e.is_conflict() => last = Some(e),
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Err(last.expect("the loop ran and lost a race"))
}

/// Where one object stands while `--wait` waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Ready=True for the current generation.
    Ready,
    /// Ready=False for the current generation: the reason and message.
    Failed { reason: String, message: String },
    /// Not there yet; the text says why.
    Pending(String),
}

/// Reads an object's readiness the way Knative's `IsReady` does: Ready=True *and*
/// `status.observedGeneration == metadata.generation`.
pub fn readiness(obj: &Value) -> Readiness {
    let generation = obj
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let observed = obj
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let conds = arr_at(obj, "/status/conditions");
    let ready = condition(conds, "Ready");
    if observed != generation || ready.is_none() {
        return Readiness::Pending(format!(
            "waiting for the controller to observe generation {generation}"
        ));
    }
    let ready = ready.expect("checked above");
    let (status, reason, message) = (
        str_at(ready, "/status"),
        str_at(ready, "/reason").to_string(),
        str_at(ready, "/message").to_string(),
    );
    match status {
        "True" => Readiness::Ready,
        "False" => Readiness::Failed { reason, message },
        _ => {
            let mut why = format!("Ready={status}");
            if !reason.is_empty() {
                why.push(' ');
                why.push_str(&reason);
            }
            if !message.is_empty() {
                why.push_str(": ");
                why.push_str(&message);
            }
            Readiness::Pending(why)
        }
    }
}

/// Polls `targets` until each is Ready, one fails, or `timeout` passes, printing each change of
/// state, and every [`HEARTBEAT`] the time waited and what the newest revision's instances
/// are doing (on stderr). True when all became Ready.
async fn wait_ready(
    client: &ApiClient,
    targets: &[(Kind, String, String)],
    timeout: Duration,
) -> anyhow::Result<bool> {
    let start = Instant::now();
    let deadline = start + timeout;
    let port = gateway_port(client).await;
    let mut last: Vec<Option<String>> = vec![None; targets.len()];
    let mut done = vec![false; targets.len()];
    let mut ok = true;
    let mut next_heartbeat = start + HEARTBEAT;
    loop {
        let heartbeat = Instant::now() >= next_heartbeat;
        if heartbeat {
            next_heartbeat = Instant::now() + HEARTBEAT;
        }
        for (i, (kind, ns, name)) in targets.iter().enumerate() {
            if done[i] {
                continue;
            }
            let label = format!("{}/{name}", kind_ref(*kind));
            let obj = match client.get(&paths::item(*kind, ns, name)).await {
                Ok(o) => o,
                Err(e) if e.is_not_found() => {
                    eprintln!("error: {label} was deleted while waiting for it");
                    done[i] = true;
                    ok = false;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match readiness(&obj) {
                Readiness::Ready => {
                    done[i] = true;
                    match str_at(&obj, "/status/url") {
                        "" => println!("{label} is Ready"),
                        url => println!("{label} is Ready at {}", display_url(url, port)),
                    }
                }
                Readiness::Failed { reason, message } => {
                    done[i] = true;
                    ok = false;
                    let cause = match newest_revision(client, *kind, ns, &obj).await {
                        Some(rev) => container_failure(&rev)
                            .filter(|c| !message.contains(c.as_str()))
                            .map(|c| format!(" ({c})"))
                            .unwrap_or_default(),
                        None => String::new(),
                    };
                    eprintln!("error: {label} failed: {reason}: {message}{cause}");
                }
                Readiness::Pending(why) => {
                    if last[i].as_deref() != Some(why.as_str()) {
                        println!("{label}: {why}");
                        last[i] = Some(why);
                    } else if heartbeat {
                        let waited = human_duration(start.elapsed().as_secs());
                        let doing = match newest_revision(client, *kind, ns, &obj).await {
                            Some(rev) => revision_progress(&rev),
                            None => String::new(),
                        };
                        eprintln!("{label}: still waiting after {waited}{doing}");
                    }
                }
            }
        }
        if done.iter().all(|d| *d) {
            return Ok(ok);
        }
        if Instant::now() >= deadline {
            for (i, (kind, _, name)) in targets.iter().enumerate() {
                if !done[i] {
                    eprintln!(
                        "error: timed out after {} waiting for {}/{name} to become Ready (last: {})",
                        rouse_api::duration::format_go_duration(timeout),
                        kind_ref(*kind),
                        last[i].as_deref().unwrap_or("no status")
                    );
                }
            }
            return Ok(false);
        }
        tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// The newest revision of a Service or Configuration (its `latestCreatedRevisionName`).
async fn newest_revision(client: &ApiClient, kind: Kind, ns: &str, obj: &Value) -> Option<Value> {
    if !matches!(kind, Kind::Service | Kind::Configuration) {
        return None;
    }
    let name = str_at(obj, "/status/latestCreatedRevisionName");
    if name.is_empty() {
        return None;
    }
    client
        .get(&paths::item(Kind::Revision, ns, name))
        .await
        .ok()
}

/// What a revision that is not ready yet is doing, from its status: ` (revision r: 0 of 1
/// instances ready)` and one indented line per condition that explains something, e.g.
/// `ResourcesAvailable=Unknown Deploying for 35s: Instance ... started (pid 4242, PORT 40123);
/// its readiness probe has not passed yet. Last output: ...`.
pub fn revision_progress(rev: &Value) -> String {
    let mut out = format!(" (revision {}", str_at(rev, "/metadata/name"));
    let actual = rev
        .pointer("/status/actualReplicas")
        .and_then(Value::as_i64);
    let desired = rev
        .pointer("/status/desiredReplicas")
        .and_then(Value::as_i64)
        .filter(|d| *d >= 0);
    match (actual, desired) {
        (Some(a), Some(d)) => out.push_str(&format!(": {a} of {d} instances ready")),
        (Some(a), None) => out.push_str(&format!(": {a} instances ready")),
        _ => {}
    }
    out.push(')');
    let now = super::get::now_secs();
    for c in arr_at(rev, "/status/conditions") {
        let (t, status, message) = (
            str_at(c, "/type"),
            str_at(c, "/status"),
            str_at(c, "/message"),
        );
        // Ready repeats another condition; Active only says requests are buffered.
        if status == "True" || message.is_empty() || matches!(t, "Ready" | "Active") {
            continue;
        }
        out.push_str(&format!("\n  {t}={status} {}", str_at(c, "/reason")));
        if let Some(since) = rouse_api::clock::parse_rfc3339(str_at(c, "/lastTransitionTime")) {
            out.push_str(&format!(
                " for {}",
                human_duration(now.saturating_sub(since))
            ));
        }
        out.push_str(&format!(": {message}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn progress_says_what_the_instances_do() {
        let rev = json!({
            "metadata": {"name": "s-00001"},
            "status": {"actualReplicas": 0, "desiredReplicas": 1, "conditions": [
                {"type": "Active", "status": "Unknown", "reason": "Queued", "message": "buffered"},
                {"type": "ResourcesAvailable", "status": "Unknown", "reason": "Deploying",
                 "message": "Instance s-00001-abcde started (pid 42, PORT 4000); its readiness probe has not passed yet."},
                {"type": "Ready", "status": "Unknown", "reason": "Deploying", "message": "same"},
            ]}
        });
        assert_eq!(
            revision_progress(&rev),
            " (revision s-00001: 0 of 1 instances ready)\n  ResourcesAvailable=Unknown Deploying: Instance s-00001-abcde started (pid 42, PORT 4000); its readiness probe has not passed yet."
        );
    }

    #[test]
    fn readiness_needs_the_current_generation() {
        let mut o = json!({
            "metadata": {"generation": 2},
            "status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}
        });
        assert!(matches!(readiness(&o), Readiness::Pending(w) if w.contains("generation 2")));
        o["status"]["observedGeneration"] = json!(2);
        assert_eq!(readiness(&o), Readiness::Ready);
        o["status"]["conditions"] = json!([{"type": "Ready", "status": "False",
            "reason": "RevisionFailed", "message": "exit status 1"}]);
        assert_eq!(
            readiness(&o),
            Readiness::Failed {
                reason: "RevisionFailed".into(),
                message: "exit status 1".into()
            }
        );
        o["status"]["conditions"] = json!([{"type": "Ready", "status": "Unknown",
            "reason": "RevisionMissing", "message": "waiting"}]);
        assert_eq!(
            readiness(&o),
            Readiness::Pending("Ready=Unknown RevisionMissing: waiting".into())
        );
        assert!(matches!(
            readiness(&json!({"metadata": {"generation": 1}})),
            Readiness::Pending(_)
        ));
    }
}

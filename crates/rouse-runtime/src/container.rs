//! Instances as Docker containers: image resolution (once per revision, to a digest), the
//! container each run gets (Knative's contract: `PORT`, env, command/args, limits, security
//! context, published on a loopback port), and removing what a killed platform left.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rouse_queue::{CommandRunner, ProbeAction, ProbeFailure, ProbeSpec, RunFuture};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::command::{expand, instance_env};
use crate::docker::{DockerClient, DockerError};
use crate::spec::{ContainerSpec, ImageState, PullPolicy, WorkloadSpec};

/// Knative's reason for an image that cannot be found or pulled.
pub(crate) const REASON_IMAGE: &str = "ContainerMissing";
/// A failed resolution is tried again after this long (on the next look).
const RETRY_FAILED_AFTER: Duration = Duration::from_secs(10);

/// Labels every container carries.
pub(crate) const LABEL_PLATFORM: &str = "dev.rouse.platform";
pub(crate) const LABEL_NAMESPACE: &str = "dev.rouse.namespace";
pub(crate) const LABEL_REVISION: &str = "dev.rouse.revision";
pub(crate) const LABEL_INSTANCE: &str = "dev.rouse.instance";

type Key = (String, String);

/// The container backend: the engine client, this platform's label and the revisions'
/// resolved images.
pub(crate) struct Containers {
    pub(crate) client: DockerClient,
    /// Names this platform instance (a hash of its data dir).
    pub(crate) platform: String,
    images: Mutex<HashMap<Key, Resolution>>,
    /// Per revision, a container created ahead (not started) for its next instance; `None`
    /// while one is being made.
    warm: Mutex<HashMap<Key, Option<Warm>>>,
}

/// A container created ahead, with the loopback port it publishes on.
pub(crate) struct Warm {
    pub(crate) id: String,
    pub(crate) port: u16,
}

struct Resolution {
    state: ImageState,
    at: Instant,
}

/// The platform label's value for a data dir: a stable FNV-1a hash of its path.
pub(crate) fn platform_id(data_dir: &Path) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data_dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

impl Containers {
    pub(crate) fn new(client: DockerClient, data_dir: &Path) -> Self {
        Containers {
            client,
            platform: platform_id(data_dir),
            images: Mutex::new(HashMap::new()),
            warm: Mutex::new(HashMap::new()),
        }
    }

    /// Where the revision's image stands; starts resolving it (in the background, calling
    /// `done` when finished) the first time, or again a while after a failure.
    pub(crate) fn image_state(
        self: &Arc<Self>,
        spec: &WorkloadSpec,
        handle: &tokio::runtime::Handle,
        done: impl FnOnce() + Send + 'static,
    ) -> ImageState {
        let Some(c) = &spec.container else {
            return ImageState::NotImage;
        };
        if let Some(d) = &c.digest {
            return ImageState::Resolved(d.clone());
        }
        let key = (spec.namespace.clone(), spec.revision.clone());
        let mut images = crate::process::lock(&self.images);
        if let Some(r) = images.get(&key) {
            let retry = matches!(r.state, ImageState::Failed { .. })
                && r.at.elapsed() >= RETRY_FAILED_AFTER;
            if !retry {
                return r.state.clone();
            }
        }
        let previous = images.get(&key).map(|r| r.state.clone());
        images.insert(
            key.clone(),
            Resolution {
                state: previous.unwrap_or(ImageState::Resolving),
                at: Instant::now(),
            },
        );
        drop(images);
        let this = self.clone();
        let c = c.clone();
        handle.spawn(async move {
            let state = this.resolve(&c).await;
            crate::process::lock(&this.images).insert(
                key,
                Resolution {
                    state,
                    at: Instant::now(),
                },
            );
            done();
        });
        crate::process::lock(&self.images)
            .get(&(spec.namespace.clone(), spec.revision.clone()))
            .map_or(ImageState::Resolving, |r| r.state.clone())
    }

    /// Forgets a removed revision's resolution, and removes its container made ahead.
    pub(crate) fn forget(
        self: &Arc<Self>,
        namespace: &str,
        revision: &str,
        handle: &tokio::runtime::Handle,
    ) {
        let key = (namespace.to_string(), revision.to_string());
        crate::process::lock(&self.images).remove(&key);
        if let Some(Some(w)) = crate::process::lock(&self.warm).remove(&key) {
            let this = self.clone();
            handle.spawn(async move {
                let _ = this.client.remove(&w.id).await;
            });
        }
    }

    /// The revision's container made ahead, if one is ready.
    pub(crate) fn take_warm(&self, namespace: &str, revision: &str) -> Option<Warm> {
        let key = (namespace.to_string(), revision.to_string());
        let mut warm = crate::process::lock(&self.warm);
        match warm.get(&key) {
            Some(Some(_)) => warm.remove(&key).flatten(),
            _ => None,
        }
    }

    /// Makes a container ahead for the revision's next instance, unless it has one (or one
    /// is being made): the image resolved, the whole configuration, a free loopback port.
    /// A cold start then only starts it.
    pub(crate) fn prepare_warm(
        self: &Arc<Self>,
        spec: Arc<WorkloadSpec>,
        handle: &tokio::runtime::Handle,
    ) {
        let key = (spec.namespace.clone(), spec.revision.clone());
        {
            let mut warm = crate::process::lock(&self.warm);
            if warm.contains_key(&key) {
                return;
            }
            warm.insert(key.clone(), None);
        }
        let this = self.clone();
        handle.spawn(async move {
            let made = async {
                let image = this.image_for(&spec).await.ok()?;
                let port = crate::process::free_port().ok()?;
                let suffix: String = (0..5)
                    .map(|_| fastrand::alphanumeric().to_ascii_lowercase())
                    .collect();
                let name = format!("rouse-{}-{}-warm-{suffix}", key.0, key.1);
                let config = this.config(&spec, &image, &format!("{}-warm", key.1), port);
                match this.client.create(&name, &config).await {
                    Ok(id) => Some(Warm { id, port }),
                    Err(e) => {
                        tracing::debug!(revision = %key.1, error = %e, "cannot make a container ahead");
                        None
                    }
                }
            }
            .await;
            let unwanted = {
                let mut warm = crate::process::lock(&this.warm);
                match (warm.get(&key), made) {
                    // Still wanted (not forgotten meanwhile).
                    (Some(None), Some(w)) => {
                        warm.insert(key, Some(w));
                        None
                    }
                    (Some(None), None) => {
                        // Failed: tried again on the next look.
                        warm.remove(&key);
                        None
                    }
                    (_, made) => made,
                }
            };
            if let Some(w) = unwanted {
                let _ = this.client.remove(&w.id).await;
            }
        });
    }

    /// Removes a container made ahead that will not be used.
    pub(crate) fn discard(self: &Arc<Self>, id: String, handle: &tokio::runtime::Handle) {
        let this = self.clone();
        handle.spawn(async move {
            let _ = this.client.remove(&id).await;
        });
    }

    /// Removes every container made ahead (at shutdown).
    pub(crate) async fn remove_all_warm(&self) {
        let all: Vec<Warm> = crate::process::lock(&self.warm)
            .drain()
            .filter_map(|(_, w)| w)
            .collect();
        for w in all {
            let _ = self.client.remove(&w.id).await;
        }
    }

    /// The image an instance of `spec` runs: the recorded digest, else the revision's
    /// resolution (made now if there is none yet).
    pub(crate) async fn image_for(&self, spec: &WorkloadSpec) -> Result<String, (String, String)> {
        let c = spec.container.as_ref().ok_or_else(|| {
            (
                REASON_IMAGE.to_string(),
                "the revision names no image".to_string(),
            )
        })?;
        if let Some(d) = &c.digest {
            return Ok(d.clone());
        }
        let known = crate::process::lock(&self.images)
            .get(&(spec.namespace.clone(), spec.revision.clone()))
            .map(|r| r.state.clone());
        let state = match known {
            Some(s @ ImageState::Resolved(_)) => s,
            _ => self.resolve(c).await,
        };
        match state {
            ImageState::Resolved(d) => Ok(d),
            ImageState::Failed { reason, message } => Err((reason, message)),
            _ => Err((
                REASON_IMAGE.into(),
                format!("image {:?} is not resolved", c.image),
            )),
        }
    }

    /// Inspects the image (pulling it first when the policy says so, or when it is missing
    /// and may be pulled) and names its digest.
    async fn resolve(&self, c: &ContainerSpec) -> ImageState {
        let failed = |e: &dyn std::fmt::Display| ImageState::Failed {
            reason: REASON_IMAGE.to_string(),
            message: format!("Unable to fetch image {:?}: {e}", c.image),
        };
        if let Err(e) = self.client.ping().await {
            return failed(&format!(
                "{e} (a revision naming only an image runs as a Docker container: start Docker \
                 Engine, or give the container a command to run it as a process)"
            ));
        }
        if c.pull_policy == PullPolicy::Always
            && let Err(e) = self.client.pull(&c.image).await
        {
            return failed(&e);
        }
        let inspected = match self.client.inspect_image(&c.image).await {
            Err(e) if e.is_not_found() && c.pull_policy == PullPolicy::IfNotPresent => {
                match self.client.pull(&c.image).await {
                    Ok(()) => self.client.inspect_image(&c.image).await,
                    Err(e) => return failed(&e),
                }
            }
            Err(e) if e.is_not_found() && c.pull_policy == PullPolicy::Never => {
                return failed(&format!(
                    "{e} (imagePullPolicy is Never, so it is not pulled)"
                ));
            }
            other => other,
        };
        match inspected {
            Ok(v) => match digest_of(&c.image, &v) {
                Some(d) => ImageState::Resolved(d),
                None => failed(&"the engine reported no image id"),
            },
            Err(e) => failed(&e),
        }
    }

    /// The container an instance's run gets: its labels, `PORT` and the app's environment,
    /// command and args, limits, security context, and its port published on
    /// `127.0.0.1:host_port`.
    pub(crate) fn config(
        &self,
        spec: &WorkloadSpec,
        image: &str,
        instance: &str,
        host_port: u16,
    ) -> Value {
        let c = spec.container.clone().unwrap_or_default();
        let port = c.port;
        let env = instance_env(spec, port);
        let vars: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let env_list: Vec<String> = dedup(&env)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let port_key = format!("{port}/tcp");
        let mut config = json!({
            "Image": image,
            "Env": env_list,
            "Labels": {
                LABEL_PLATFORM: self.platform,
                LABEL_NAMESPACE: spec.namespace,
                LABEL_REVISION: spec.revision,
                LABEL_INSTANCE: instance,
            },
            "ExposedPorts": { port_key.clone(): {} },
            "HostConfig": {
                "PortBindings": {
                    port_key: [{ "HostIp": "127.0.0.1", "HostPort": host_port.to_string() }]
                },
                "ReadonlyRootfs": c.read_only_root,
                "CapAdd": c.cap_add,
                "CapDrop": c.cap_drop,
                // Logs are read through the API into the instance's log file.
                "LogConfig": { "Type": "json-file", "Config": { "max-size": "10m", "max-file": "1" } },
            },
        });
        // Kubernetes' rule: `command` replaces the entrypoint (and the image's cmd), `args`
        // the cmd; `$(VAR)` expands from the container's variables.
        if !spec.command.is_empty() {
            config["Entrypoint"] = json!(
                spec.command
                    .iter()
                    .map(|a| expand(a, &vars))
                    .collect::<Vec<_>>()
            );
        }
        if !spec.args.is_empty() {
            config["Cmd"] = json!(
                spec.args
                    .iter()
                    .map(|a| expand(a, &vars))
                    .collect::<Vec<_>>()
            );
        }
        if let Some(dir) = &spec.working_dir {
            config["WorkingDir"] = json!(dir.display().to_string());
        }
        if let Some(user) = &c.user {
            config["User"] = json!(user);
        }
        if let Some(n) = c.nano_cpus {
            config["HostConfig"]["NanoCpus"] = json!(n);
        }
        if let Some(m) = c.memory_bytes {
            config["HostConfig"]["Memory"] = json!(m);
        }
        config
    }

    /// Removes every container this platform left behind (a killed `rouse serve`): found by
    /// the platform label. Returns a line per container removed. Quiet when Docker is not
    /// there.
    pub(crate) async fn clean_leftovers(&self) -> Vec<String> {
        let label = format!("{LABEL_PLATFORM}={}", self.platform);
        let found = match self.client.list(&[label]).await {
            Ok(f) => f,
            Err(DockerError::Unreachable { .. }) => return Vec::new(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list containers left behind");
                return Vec::new();
            }
        };
        let mut lines = Vec::new();
        for (id, name) in found {
            match self.client.remove(&id).await {
                Ok(()) => lines.push(format!(
                    "removed container {name} ({})",
                    &id[..12.min(id.len())]
                )),
                Err(e) => {
                    tracing::warn!(container = %name, error = %e, "cannot remove a container left behind")
                }
            }
        }
        lines
    }
}

/// Runs exec probes inside an instance's container through the engine's exec API, as the
/// kubelet does: the container's own environment, user and working directory apply.
#[derive(Debug)]
pub(crate) struct ContainerExec {
    client: DockerClient,
    /// The container of the instance's current run (a new one each restart).
    current: Mutex<Option<String>>,
}

impl ContainerExec {
    pub(crate) fn new(client: DockerClient) -> Self {
        ContainerExec {
            client,
            current: Mutex::new(None),
        }
    }

    /// Probes run in `id` from now on.
    pub(crate) fn set_container(&self, id: &str) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(id.to_string());
    }
}

impl CommandRunner for ContainerExec {
    fn run<'a>(
        &'a self,
        command: &'a [String],
        env: &'a [(String, String)],
        dir: Option<&'a Path>,
    ) -> RunFuture<'a> {
        Box::pin(async move {
            let program = command.first().cloned().unwrap_or_default();
            let spawn = |reason: String| ProbeFailure::Spawn {
                program: program.clone(),
                reason,
            };
            if command.is_empty() {
                return Err(spawn("the exec probe has no command".into()));
            }
            let id = self
                .current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .ok_or_else(|| spawn("the container is not running".into()))?;
            match self.client.exec(&id, command, env, dir).await {
                Ok((Some(0), _)) => Ok(()),
                Ok((code, output)) => Err(ProbeFailure::exited(
                    code.and_then(|c| i32::try_from(c).ok()),
                    &output,
                )),
                Err(e) => Err(spawn(format!("in its container: {e}"))),
            }
        })
    }
}

/// A probe as it runs for a container instance: an exec probe's `$(VAR)` references expand
/// from the container's variables (its `PORT` is the container port), and nothing of the
/// host is added: the command runs inside the container, with its environment, `PATH` and
/// working directory. Other probes are unchanged.
pub(crate) fn container_probe(probe: &ProbeSpec, spec: &WorkloadSpec) -> ProbeSpec {
    let ProbeAction::Exec {
        command,
        env,
        working_dir,
    } = &probe.action
    else {
        return probe.clone();
    };
    let port = spec.container.as_ref().map_or(8080, |c| c.port);
    let mut declared = instance_env(spec, port);
    declared.extend(env.iter().cloned());
    let vars: HashMap<&str, &str> = declared
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    ProbeSpec {
        action: ProbeAction::Exec {
            command: command.iter().map(|a| expand(a, &vars)).collect(),
            env: env.clone(),
            working_dir: working_dir.clone(),
        },
        ..probe.clone()
    }
}

/// Each name once, a later value winning, in first-seen order.
fn dedup(env: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in env {
        out.retain(|(n, _)| n != k);
        out.push((k.clone(), v.clone()));
    }
    out
}

/// The digest to record for an inspected image: its repo digest for the named repository
/// (`repo@sha256:…`) when it came from a registry, else its image id (`sha256:…`), which
/// pins a locally built image just as well.
fn digest_of(image: &str, inspected: &Value) -> Option<String> {
    let (name, _) = crate::docker::split_reference(image);
    let repo_digests: Vec<&str> = inspected["RepoDigests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    repo_digests
        .iter()
        .find(|d| d.split_once('@').is_some_and(|(r, _)| r == name))
        .or(repo_digests.first())
        .map(|d| d.to_string())
        .or_else(|| inspected["Id"].as_str().map(String::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_prefers_the_repositorys_repo_digest_then_the_id() {
        let v = json!({"Id": "sha256:aa", "RepoDigests": ["other@sha256:bb", "x/y@sha256:cc"]});
        assert_eq!(digest_of("x/y:1", &v).as_deref(), Some("x/y@sha256:cc"));
        assert_eq!(digest_of("z", &v).as_deref(), Some("other@sha256:bb"));
        let local = json!({"Id": "sha256:aa", "RepoDigests": []});
        assert_eq!(digest_of("z:1", &local).as_deref(), Some("sha256:aa"));
    }

    #[test]
    fn config_carries_the_container_contract() {
        let c = Containers::new(DockerClient::new("/nonexistent".into()), Path::new("/d"));
        let spec = WorkloadSpec {
            namespace: "ns".into(),
            revision: "r1".into(),
            configuration: "cfg".into(),
            service: "svc".into(),
            command: vec!["/app".into()],
            args: vec!["--port=$(PORT)".into()],
            env: vec![("A".into(), "1".into()), ("A".into(), "2".into())],
            working_dir: Some("/work".into()),
            queue: crate::spec::QueueTemplate {
                h2c: false,
                container_concurrency: 0,
                readiness: Default::default(),
                revision: "r1".into(),
                namespace: "ns".into(),
                timeout: None,
                response_start_timeout: None,
                idle_timeout: None,
                request_body_buffer: 0,
            },
            drain_timeout: Duration::from_secs(1),
            liveness: None,
            startup: None,
            container: Some(ContainerSpec {
                image: "img:1".into(),
                port: 9000,
                nano_cpus: Some(500_000_000),
                memory_bytes: Some(64 << 20),
                user: Some("1000".into()),
                read_only_root: true,
                cap_drop: vec!["ALL".into()],
                ..ContainerSpec::default()
            }),
        };
        let v = c.config(&spec, "sha256:aa", "r1-abcde", 41000);
        assert_eq!(v["Image"], "sha256:aa");
        assert_eq!(v["Entrypoint"], json!(["/app"]));
        assert_eq!(v["Cmd"], json!(["--port=9000"]));
        let env: Vec<&str> = v["Env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(env.contains(&"PORT=9000") && env.contains(&"A=2") && !env.contains(&"A=1"));
        assert!(env.contains(&"K_SERVICE=svc"));
        assert_eq!(v["WorkingDir"], "/work");
        assert_eq!(v["User"], "1000");
        assert_eq!(v["HostConfig"]["NanoCpus"], 500_000_000);
        assert_eq!(v["HostConfig"]["Memory"], 64 << 20);
        assert_eq!(v["HostConfig"]["ReadonlyRootfs"], true);
        assert_eq!(v["HostConfig"]["CapDrop"], json!(["ALL"]));
        assert_eq!(
            v["HostConfig"]["PortBindings"]["9000/tcp"][0]["HostPort"],
            "41000"
        );
        assert_eq!(v["Labels"][LABEL_PLATFORM], platform_id(Path::new("/d")));
        assert_eq!(v["Labels"][LABEL_INSTANCE], "r1-abcde");
    }
}

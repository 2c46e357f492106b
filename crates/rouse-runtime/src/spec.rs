//! What the runtime is asked to run, and what it reports back.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rouse_queue::ProbeSpec;

/// Everything a revision's instances need: the program, its environment and the queue-proxy
/// settings in front of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// The revision's namespace.
    pub namespace: String,
    /// The revision's name.
    pub revision: String,
    /// The owning configuration (`K_CONFIGURATION`).
    pub configuration: String,
    /// The owning service, or "" (`K_SERVICE`).
    pub service: String,
    /// `containers[0].command`: the program and its first arguments.
    pub command: Vec<String>,
    /// `containers[0].args`: further arguments.
    pub args: Vec<String>,
    /// Environment variables with literal values, in order (a later one wins).
    pub env: Vec<(String, String)>,
    /// The working directory (relative ones resolve against the platform's current dir).
    pub working_dir: Option<PathBuf>,
    /// The queue-proxy's settings, all but the app's address.
    pub queue: QueueTemplate,
    /// How long a stopping instance's requests in flight may take to finish (the revision's
    /// `timeoutSeconds`).
    pub drain_timeout: Duration,
    /// The app's liveness probe: once the process runs (after its initial delay) it is tried
    /// every period (10 s when zero) with its timeout, and after `failure_threshold`
    /// consecutive failures the process is restarted ([`LIVENESS_PROBE_FAILED`]). An exec
    /// probe runs with the instance's environment and working directory.
    pub liveness: Option<ProbeSpec>,
    /// The app's startup probe: tried every period (10 s when zero) from the start of each
    /// run until it passes once; until then neither readiness nor liveness is probed (the
    /// instance is not Ready). After `failure_threshold` consecutive failures the process is
    /// restarted ([`STARTUP_PROBE_FAILED`]), as the kubelet does.
    pub startup: Option<ProbeSpec>,
    /// The container image and its settings, for the Docker runtime. An instance runs as a
    /// container when the spec has no `command` (or the runtime is forced to Docker).
    pub container: Option<ContainerSpec>,
}

/// `imagePullPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Pull only when the image is not on the machine (the default here).
    #[default]
    IfNotPresent,
    /// Pull on every resolution (at revision creation), even when the image is present.
    Always,
    /// Never pull: the image must be on the machine.
    Never,
}

/// What a container instance needs beyond [`WorkloadSpec`]'s program and environment.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ContainerSpec {
    /// The container's name (`containers[0].name`), reported in `containerStatuses`.
    pub name: String,
    /// The image as written (`containers[0].image`).
    pub image: String,
    /// The image's digest recorded when the revision was created (its
    /// `containerStatuses[].imageDigest`); instances run from it once known.
    pub digest: Option<String>,
    /// `imagePullPolicy`.
    pub pull_policy: PullPolicy,
    /// The port the app listens on inside the container (`PORT`): `ports[0].containerPort`,
    /// else 8080.
    pub port: u16,
    /// `resources.limits.cpu` in billionths of a CPU.
    pub nano_cpus: Option<i64>,
    /// `resources.limits.memory` in bytes.
    pub memory_bytes: Option<i64>,
    /// `securityContext.runAsUser` (and `runAsGroup`): `uid` or `uid:gid`.
    pub user: Option<String>,
    /// `securityContext.readOnlyRootFilesystem`.
    pub read_only_root: bool,
    /// `securityContext.capabilities.add`.
    pub cap_add: Vec<String>,
    /// `securityContext.capabilities.drop`.
    pub cap_drop: Vec<String>,
}

/// Where a revision's image stands: resolved to a digest once, when the revision is new.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageState {
    /// The revision runs no image (a process).
    NotImage,
    /// Being inspected or pulled; the runtime notifies the revision when done.
    Resolving,
    /// Found: its digest (`repo@sha256:…`, or the image id when it has no repo digest);
    /// empty when the runtime runs the image by tag without resolving it (on Kubernetes, a
    /// registry in config-deployment's `registries-skipping-tag-resolving`).
    Resolved(String),
    /// Cannot be found or pulled: Knative's reason (`ContainerMissing`) and a message with
    /// the daemon's.
    Failed {
        /// One word.
        reason: String,
        /// Why.
        message: String,
    },
}

/// Which backend runs image-only and command revisions (`rouse serve --runtime`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backend {
    /// A revision with a `command` runs as a process, one naming only an image as a
    /// container.
    #[default]
    Auto,
    /// Everything runs as a process (image-only revisions fail).
    Process,
    /// Everything runs as a container (a `command` overrides the image's entrypoint).
    Docker,
}

/// The [`Termination::reason`] of a run ended because its liveness probe failed.
pub const LIVENESS_PROBE_FAILED: &str = "LivenessProbeFailed";

/// The [`Termination::reason`] of a run ended because its startup probe failed.
pub const STARTUP_PROBE_FAILED: &str = "StartupProbeFailed";

/// A [`rouse_queue::QueueConfig`] without the app's address (which each instance gets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueTemplate {
    /// Speak HTTP/2 cleartext to the app.
    pub h2c: bool,
    /// `containerConcurrency`; 0 means unlimited.
    pub container_concurrency: u32,
    /// The app's readiness probe (an exec probe runs with the instance's environment and
    /// working directory).
    pub readiness: ProbeSpec,
    /// The revision's name.
    pub revision: String,
    /// The revision's namespace.
    pub namespace: String,
    /// The revision's `timeoutSeconds`; `None` means no limit.
    pub timeout: Option<Duration>,
    /// The revision's `responseStartTimeoutSeconds`; `None` means no limit.
    pub response_start_timeout: Option<Duration>,
    /// The revision's `idleTimeoutSeconds`; `None` means no limit.
    pub idle_timeout: Option<Duration>,
    /// Request bodies up to this many bytes are received whole before they take a slot
    /// (`rouse.dev/request-body-buffer`); 0 streams them.
    pub request_body_buffer: u64,
}

/// Where an instance is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceState {
    /// Its process runs but has not passed readiness since it (re)started.
    Starting,
    /// Its process runs and passes readiness: it can take requests.
    Ready,
    /// It failed readiness after passing it, or its process is down waiting for a restart.
    NotReady,
    /// It is being stopped (draining, then signalled).
    Terminating,
}

/// How an instance's last run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Termination {
    /// The exit code, when the process exited.
    pub exit_code: Option<i32>,
    /// The signal, when the process was killed by one.
    pub signal: Option<i32>,
    /// Why, in a word: `ContainerMissing` (the program cannot be found or executed),
    /// `StartError` (it could not be started for another reason), `Error` (it exited with a
    /// non-zero code or by a signal), `Completed` (it exited with code 0),
    /// `LivenessProbeFailed` (its liveness probe failed, so it was restarted).
    pub reason: String,
    /// Detail: the OS error for a start failure, else the last lines the process wrote.
    pub message: String,
}

/// One instance of a revision, as last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceInfo {
    /// Unique among the revision's instances (`<revision>-<5 chars>`).
    pub id: String,
    /// Its queue-proxy's address: where requests for this instance go.
    pub endpoint: SocketAddr,
    /// The `PORT` its app listens on.
    pub app_port: u16,
    /// The app's process id while it runs.
    pub pid: Option<u32>,
    /// Where it is in its life.
    pub state: InstanceState,
    /// How many times its process was restarted (or a start was retried).
    pub restarts: u32,
    /// How its last run ended, if one did.
    pub last_termination: Option<Termination>,
    /// Its stdout and stderr.
    pub log_path: PathBuf,
    /// Whether it has ever passed readiness.
    pub ever_ready: bool,
}

/// Default [`RuntimeOptions::max_instances`].
pub const DEFAULT_MAX_INSTANCES: usize = 100;
/// Default [`RuntimeOptions::log_max_bytes`]: 10 MiB.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Default [`RuntimeOptions::log_max_files`].
pub const DEFAULT_LOG_MAX_FILES: u32 = 3;
/// Default [`RuntimeOptions::log_retention`]: 10 minutes.
pub const DEFAULT_LOG_RETENTION: Duration = Duration::from_secs(600);

/// How the process runtime runs instances, beyond each revision's own spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// How long a process gets between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Names of `rouse serve`'s environment variables workloads get besides `PATH`, `HOME`,
    /// `LANG` and `TZ` (each when set). Read once, when the runtime is made.
    pub pass_env: Vec<String>,
    /// The most instances running at once, over all revisions (terminating ones not
    /// counted); a scale-up past it is refused. 0: no limit.
    pub max_instances: usize,
    /// A log file larger than this is rotated (checked every second).
    pub log_max_bytes: u64,
    /// Log files kept per instance, the live one included (1: truncate only).
    pub log_max_files: u32,
    /// How long a removed revision's logs are kept, for debugging.
    pub log_retention: Duration,
    /// Which backend runs which revisions.
    pub backend: Backend,
    /// Docker Engine's socket (`None`: `DOCKER_HOST` when it is `unix://…`, else
    /// `/var/run/docker.sock`).
    pub docker_socket: Option<PathBuf>,
    /// `config-observability`'s request log, followed by every instance's queue-proxy (its
    /// lines go to the instance's log). `None`: never logged.
    pub request_log: Option<std::sync::Arc<rouse_queue::RequestLogSwitch>>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            kill_grace: crate::KILL_GRACE,
            pass_env: Vec::new(),
            max_instances: DEFAULT_MAX_INSTANCES,
            log_max_bytes: DEFAULT_LOG_MAX_BYTES,
            log_max_files: DEFAULT_LOG_MAX_FILES,
            log_retention: DEFAULT_LOG_RETENTION,
            backend: Backend::Auto,
            docker_socket: None,
            request_log: None,
        }
    }
}

//! The runtime seam: what runs a revision's instances. [`Runtime`] is the trait the reconcilers
//! drive (make a revision's instances number N, report them, stop them); [`ProcessRuntime`] is
//! the local backend, which runs each instance as a child process behind an in-process
//! queue-proxy, or as a Docker container (a revision naming only an image) behind the same
//! queue-proxy.

#![warn(missing_docs)]

mod command;
mod container;
mod docker;
mod leftovers;
mod logs;
mod process;
mod spec;
mod sys;

use std::future::Future;
use std::pin::Pin;

pub use command::{DEFAULT_PATH, base_env};
pub use docker::DockerError;
pub use process::{
    BACKOFF_MAX, BACKOFF_RESET_AFTER, BACKOFF_START, KILL_GRACE, LIVENESS_PERIOD, ProcessRuntime,
};
pub use rouse_queue::{ProbeAction, ProbeFailure, ProbeSpec};
pub use spec::{
    Backend, ContainerSpec, DEFAULT_LOG_MAX_BYTES, DEFAULT_LOG_MAX_FILES, DEFAULT_LOG_RETENTION,
    DEFAULT_MAX_INSTANCES, ImageState, InstanceInfo, InstanceState, LIVENESS_PROBE_FAILED,
    PullPolicy, QueueTemplate, RuntimeOptions, STARTUP_PROBE_FAILED, Termination, WorkloadSpec,
};
pub use sys::{nofile_limit, raise_nofile_limit};

/// What [`Runtime::scrape`] resolves to: `(instance id, stats)` per report.
pub type Scrape =
    Pin<Box<dyn Future<Output = Vec<(String, rouse_queue::QueueStats)>> + Send + 'static>>;

/// Runs revisions' instances. Calls return at once; the work happens in the background and
/// every change is announced on [`Runtime::subscribe`].
pub trait Runtime: Send + Sync + 'static {
    /// Declarative: make the revision's instances number `desired` (start/stop in background).
    /// Scaling down stops the newest instances first.
    fn ensure(&self, spec: WorkloadSpec, desired: u32);
    /// The revision's instances now, oldest first, including ones still terminating.
    fn instances(&self, namespace: &str, revision: &str) -> Vec<InstanceInfo>;
    /// Stop all instances of a revision (drain, SIGTERM, SIGKILL) and forget it.
    fn remove(&self, namespace: &str, revision: &str);
    /// One load report per instance of the revision (every one [`Runtime::instances`] lists,
    /// terminating ones included, since their requests in flight are load), covering the time
    /// since the previous call for that instance: `(instance id, stats)`. Each call starts a
    /// new period, so one scraper should call it, about once a second. Local mode reads the
    /// in-process queue-proxies (the future is ready at once). A runtime that reads its
    /// instances over the network may sample them (Kubernetes: Knative's sample size) and then
    /// answers one report already extrapolated to all of them; an empty answer records
    /// nothing (no instance, or the sample could not be completed).
    fn scrape(&self, namespace: &str, revision: &str) -> Scrape;
    /// Why the revision's last scale-up was refused, while it is (a limit on instances).
    fn scale_refusal(&self, _namespace: &str, _revision: &str) -> Option<String> {
        None
    }
    /// True when the runtime resolves env `valueFrom` sources itself (on Kubernetes the
    /// kubelet reads the ConfigMaps, Secrets and fields); the local runtimes cannot, so a
    /// revision with one fails saying so.
    fn resolves_env_sources(&self) -> bool {
        false
    }
    /// Where the revision's image stands (resolved once, to a digest, when the revision is
    /// new; the runtime notifies the revision when a resolution ends). Runtimes that run
    /// programs, not images, say [`ImageState::NotImage`].
    fn image(&self, _spec: &WorkloadSpec) -> ImageState {
        ImageState::NotImage
    }
    /// Notifies (namespace, revision) whenever any instance of it changes state.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<(String, String)>;
    /// Stop everything with drain; resolves when all processes are gone.
    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

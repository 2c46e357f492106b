//! The local process backend: each instance is a child process behind an in-process
//! queue-proxy.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rouse_queue::{
    AppProbe, LogOutput, ProbeSpec, QueueConfig, QueueProxy, QueueStats, RequestLogger,
    RevisionInfo,
};
use tokio::runtime::Handle;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::time::Instant;

use crate::command::{self, REASON_MISSING, REASON_START, base_env, instance_probe, start_failure};
use crate::container::{self, ContainerExec, Containers, container_probe};
use crate::docker::{DockerClient, default_socket};
use crate::leftovers::{self, Tracker};
use crate::logs;
use crate::spec::{
    Backend, ImageState, InstanceInfo, InstanceState, LIVENESS_PROBE_FAILED, RuntimeOptions,
    STARTUP_PROBE_FAILED, Termination, WorkloadSpec,
};
use crate::{Runtime, sys};

/// How long a process gets between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(10);
/// The first wait before restarting a process that stopped.
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// The longest wait before a restart.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A run this long resets the restart backoff.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);
/// How often a liveness probe with no period runs (Kubernetes' `periodSeconds` default).
pub const LIVENESS_PERIOD: Duration = Duration::from_secs(10);
/// Lines of a stopped process's output kept in its [`Termination`] message.
const TAIL_LINES: usize = 10;
/// Bytes of output read to find those lines.
const TAIL_BYTES: u64 = 4096;
/// After an instance's first stop (a warning), a crash loop is logged at warning level once
/// per this many restarts, as a summary.
const CRASH_SUMMARY_EVERY: u32 = 10;
/// How often log sizes and removed revisions' logs are looked at.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

type Key = (String, String);

/// Runs revisions locally, as processes or (a revision naming only an image, or all with
/// `Backend::Docker`) as Docker containers: each instance gets a free loopback port (its
/// `PORT`, or the one its container's port is published on), a log file under
/// `<data_dir>/logs/<namespace>/<revision>/<instance>.log` (rotated by size, removed a while
/// after the revision) and a queue-proxy in front. Crashed processes restart with exponential
/// backoff; every process dies with the platform, and what a killed platform left is found
/// by the next one ([`ProcessRuntime::clean_leftovers`]).
pub struct ProcessRuntime {
    shared: Arc<Shared>,
}

struct Shared {
    data_dir: PathBuf,
    handle: Handle,
    options: RuntimeOptions,
    /// What every workload gets of the platform's environment.
    base_env: Vec<(String, String)>,
    tracker: Tracker,
    /// The container backend (Docker Engine is only contacted when an image runs).
    containers: Arc<Containers>,
    revisions: Mutex<HashMap<Key, RevisionEntry>>,
    /// Why a revision's scale-up was refused, until one is not.
    refusals: Mutex<HashMap<Key, String>>,
    /// Removed revisions whose logs go at the time given.
    log_removals: Mutex<HashMap<Key, Instant>>,
    events: broadcast::Sender<Key>,
    closing: AtomicBool,
    /// Instance supervisors still running.
    live: watch::Sender<usize>,
}

struct RevisionEntry {
    spec: Arc<WorkloadSpec>,
    instances: Vec<Instance>,
}

struct Instance {
    info: Arc<Mutex<InstanceInfo>>,
    stop: watch::Sender<bool>,
    queue: Arc<QueueProxy>,
}

impl Instance {
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    fn request_stop(&self) {
        lock(&self.info).state = InstanceState::Terminating;
        self.stop.send_replace(true);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the runtime down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ProcessRuntime {
    /// A runtime keeping logs under `data_dir`. Must be called inside a Tokio runtime, which
    /// then runs the instances' supervisors.
    pub fn new(data_dir: PathBuf) -> Arc<Self> {
        Self::with_options(data_dir, RuntimeOptions::default())
    }

    /// Like [`ProcessRuntime::new`] with another SIGTERM-to-SIGKILL grace.
    pub fn with_kill_grace(data_dir: PathBuf, kill_grace: Duration) -> Arc<Self> {
        Self::with_options(
            data_dir,
            RuntimeOptions {
                kill_grace,
                ..RuntimeOptions::default()
            },
        )
    }

    /// A runtime keeping logs and instance records under `data_dir` (best canonical: it
    /// names the instances' parent cgroup), with these options.
    pub fn with_options(data_dir: PathBuf, options: RuntimeOptions) -> Arc<Self> {
        let (events, _) = broadcast::channel(1024);
        let (live, _) = watch::channel(0);
        let socket = options.docker_socket.clone().unwrap_or_else(default_socket);
        let shared = Arc::new(Shared {
            tracker: Tracker::new(&data_dir),
            containers: Arc::new(Containers::new(DockerClient::new(socket), &data_dir)),
            data_dir,
            handle: Handle::current(),
            base_env: base_env(&options.pass_env),
            options,
            revisions: Mutex::new(HashMap::new()),
            refusals: Mutex::new(HashMap::new()),
            log_removals: Mutex::new(HashMap::new()),
            events,
            closing: AtomicBool::new(false),
            live,
        });
        shared.handle.spawn(housekeeping(Arc::downgrade(&shared)));
        Arc::new(ProcessRuntime { shared })
    }

    /// Stops whatever an earlier runtime on this data dir left running when it was killed
    /// (its programs' own children, say): every recorded process group still there and every
    /// instance cgroup. Returns a line per thing stopped. Call it once at start, before any
    /// instance runs, and only while holding the data dir (another platform's instances
    /// would go too). Blocks while the killed processes exit (bounded).
    /// Containers this platform left (found by its label) are removed too.
    pub fn clean_leftovers(&self) -> Vec<String> {
        let mut lines = self.shared.tracker.clean();
        let containers = self.shared.containers.clone();
        // Its own little runtime: this is called from synchronous start-up code.
        let removed = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(containers.clean_leftovers()))
                .unwrap_or_default()
        })
        .join()
        .unwrap_or_default();
        lines.extend(removed);
        lines
    }
}

impl Drop for ProcessRuntime {
    /// Stops every instance in the background (drain, SIGTERM, SIGKILL).
    fn drop(&mut self) {
        self.shared.stop_all();
    }
}

impl Runtime for ProcessRuntime {
    fn ensure(&self, spec: WorkloadSpec, desired: u32) {
        let sh = &self.shared;
        if sh.closing.load(Ordering::SeqCst) {
            tracing::debug!(revision = %spec.revision, "runtime is shutting down; ignoring ensure");
            return;
        }
        let key = (spec.namespace.clone(), spec.revision.clone());
        if sh.uses_container(&spec) {
            sh.containers
                .prepare_warm(Arc::new(spec.clone()), &sh.handle);
        }
        // Back (re-created under the same name): its logs stay.
        if desired > 0 {
            lock(&sh.log_removals).remove(&key);
        }
        let mut revs = lock(&sh.revisions);
        let running: usize = revs
            .values()
            .map(|e| e.instances.iter().filter(|i| !i.stopping()).count())
            .sum();
        let entry = revs.entry(key.clone()).or_insert_with(|| RevisionEntry {
            spec: Arc::new(spec.clone()),
            instances: Vec::new(),
        });
        if *entry.spec != spec {
            entry.spec = Arc::new(spec);
        }
        let active: Vec<usize> = (0..entry.instances.len())
            .filter(|&i| !entry.instances[i].stopping())
            .collect();
        let desired = desired as usize;
        let mut changed = false;
        let mut scaled_down = false;
        let mut refusal = None;
        if active.len() < desired {
            let max = sh.options.max_instances;
            let room = if max == 0 {
                usize::MAX
            } else {
                max.saturating_sub(running)
            };
            let wanted = desired - active.len();
            if wanted > room {
                refusal = Some(format!(
                    "cannot start {wanted} more instance(s): {running} of at most {max} \
                     instances run (rouse serve --max-instances)"
                ));
            }
            for _ in 0..wanted.min(room) {
                match sh.create(&entry.spec, &entry.instances) {
                    Ok(inst) => entry.instances.push(inst),
                    Err(e) => {
                        tracing::error!(revision = %key.1, error = %e, "cannot create an instance");
                        break;
                    }
                }
                changed = true;
            }
        } else {
            // Scale down from the newest: the oldest have warmed up the longest.
            for &i in active.iter().rev().take(active.len() - desired) {
                entry.instances[i].request_stop();
                changed = true;
                scaled_down = true;
            }
        }
        if entry.instances.is_empty() {
            revs.remove(&key);
        }
        drop(revs);
        let refusal_changed = {
            let mut refusals = lock(&sh.refusals);
            match refusal {
                Some(why) => {
                    let new = refusals.insert(key.clone(), why.clone()).as_ref() != Some(&why);
                    if new {
                        tracing::warn!(revision = %key.1, namespace = %key.0, "{why}");
                    }
                    new
                }
                None => refusals.remove(&key).is_some(),
            }
        };
        if changed || refusal_changed {
            sh.notify(&key);
        }
        if scaled_down {
            sh.notify_refused();
        }
    }

    fn scale_refusal(&self, namespace: &str, revision: &str) -> Option<String> {
        lock(&self.shared.refusals)
            .get(&(namespace.to_string(), revision.to_string()))
            .cloned()
    }

    fn instances(&self, namespace: &str, revision: &str) -> Vec<InstanceInfo> {
        let revs = lock(&self.shared.revisions);
        revs.get(&(namespace.to_string(), revision.to_string()))
            .map(|e| e.instances.iter().map(|i| lock(&i.info).clone()).collect())
            .unwrap_or_default()
    }

    fn scrape(&self, namespace: &str, revision: &str) -> crate::Scrape {
        let queues: Vec<(String, Arc<QueueProxy>)> = {
            let revs = lock(&self.shared.revisions);
            revs.get(&(namespace.to_string(), revision.to_string()))
                .map(|e| {
                    e.instances
                        .iter()
                        .map(|i| (lock(&i.info).id.clone(), i.queue.clone()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let reports: Vec<(String, QueueStats)> = queues
            .into_iter()
            .map(|(id, q)| (id, q.take_stats()))
            .collect();
        Box::pin(std::future::ready(reports))
    }

    fn image(&self, spec: &WorkloadSpec) -> ImageState {
        let sh = &self.shared;
        if spec.command.is_empty() && sh.options.backend == Backend::Process {
            return ImageState::Failed {
                reason: container::REASON_IMAGE.to_string(),
                message: format!(
                    "the container names only an image ({}), and rouse serve runs programs \
                     only (--runtime process): set `command` (and `args`) to the program to \
                     run, or use --runtime auto or docker",
                    spec.container.as_ref().map_or("", |c| c.image.as_str())
                ),
            };
        }
        if !sh.uses_container(spec) {
            return ImageState::NotImage;
        }
        let weak = Arc::downgrade(sh);
        let key = (spec.namespace.clone(), spec.revision.clone());
        sh.containers.image_state(spec, &sh.handle, move || {
            if let Some(sh) = weak.upgrade() {
                sh.notify(&key);
            }
        })
    }

    fn remove(&self, namespace: &str, revision: &str) {
        let key = (namespace.to_string(), revision.to_string());
        self.shared
            .containers
            .forget(namespace, revision, &self.shared.handle);
        lock(&self.shared.refusals).remove(&key);
        // Its logs stay a while, for debugging.
        let due = Instant::now() + self.shared.options.log_retention;
        lock(&self.shared.log_removals)
            .entry(key.clone())
            .or_insert(due);
        let stopped = {
            let revs = lock(&self.shared.revisions);
            match revs.get(&key) {
                Some(e) => {
                    e.instances.iter().for_each(Instance::request_stop);
                    true
                }
                None => false,
            }
        };
        if stopped {
            self.shared.notify(&key);
            self.shared.notify_refused();
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<(String, String)> {
        self.shared.events.subscribe()
    }

    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            self.shared.stop_all();
            let mut live = self.shared.live.subscribe();
            let _ = live.wait_for(|n| *n == 0).await;
            self.shared.containers.remove_all_warm().await;
        })
    }
}

impl Shared {
    /// Whether an instance of `spec` runs as a container.
    fn uses_container(&self, spec: &WorkloadSpec) -> bool {
        spec.container.is_some()
            && match self.options.backend {
                Backend::Auto => spec.command.is_empty(),
                Backend::Docker => true,
                Backend::Process => false,
            }
    }

    fn notify(&self, key: &Key) {
        let _ = self.events.send(key.clone());
    }

    /// Room for more instances: revisions refused for the limit get another look.
    fn notify_refused(&self) {
        let refused: Vec<Key> = lock(&self.refusals).keys().cloned().collect();
        refused.iter().for_each(|k| self.notify(k));
    }

    fn stop_all(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let keys: Vec<Key> = {
            let revs = lock(&self.revisions);
            for e in revs.values() {
                e.instances.iter().for_each(Instance::request_stop);
            }
            revs.keys().cloned().collect()
        };
        keys.iter().for_each(|k| self.notify(k));
    }

    /// Creates an instance: its id, port, queue-proxy socket and supervisor.
    fn create(
        self: &Arc<Self>,
        spec: &Arc<WorkloadSpec>,
        siblings: &[Instance],
    ) -> std::io::Result<Instance> {
        let id = loop {
            let suffix: String = (0..5)
                .map(|_| fastrand::alphanumeric().to_ascii_lowercase())
                .collect();
            let id = format!("{}-{suffix}", spec.revision);
            if !siblings.iter().any(|s| lock(&s.info).id == id) {
                break id;
            }
        };
        // A container made ahead for this revision saves its creation on this cold start.
        let warm = if self.uses_container(spec) {
            let warm = self.containers.take_warm(&spec.namespace, &spec.revision);
            self.containers.prepare_warm(spec.clone(), &self.handle);
            // Its port was only reserved: another program may have taken it since.
            warm.filter(|w| {
                let free = std::net::TcpListener::bind(("127.0.0.1", w.port)).is_ok();
                if !free {
                    self.containers.discard(w.id.clone(), &self.handle);
                }
                free
            })
        } else {
            None
        };
        let app_port = match &warm {
            Some(w) => w.port,
            None => free_port()?,
        };
        // A container's exec probes run inside its current container.
        let container_exec = self
            .uses_container(spec)
            .then(|| Arc::new(ContainerExec::new(self.containers.client.clone())));
        let log_path = self
            .data_dir
            .join("logs")
            .join(&spec.namespace)
            .join(&spec.revision)
            .join(format!("{id}.log"));
        let qp_listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        qp_listener.set_nonblocking(true)?;
        let endpoint = qp_listener.local_addr()?;
        let queue = {
            // The queue-proxy spawns its tasks on the runtime's Tokio runtime.
            let _rt = self.handle.enter();
            let listener = tokio::net::TcpListener::from_std(qp_listener)?;
            let mut cfg = queue_config(spec, app_port, &self.base_env, container_exec.is_some());
            cfg.request_log = self.options.request_log.as_ref().map(|switch| {
                Arc::new(RequestLogger::new(
                    switch.clone(),
                    LogOutput::File(log_path.clone()),
                    RevisionInfo {
                        name: spec.revision.clone(),
                        namespace: spec.namespace.clone(),
                        service: spec.service.clone(),
                        configuration: spec.configuration.clone(),
                        pod_name: id.clone(),
                        pod_ip: "127.0.0.1".into(),
                    },
                ))
            });
            Arc::new(match &container_exec {
                Some(runner) => {
                    QueueProxy::with_listener_and_runner(cfg, listener, runner.clone())?
                }
                None => QueueProxy::with_listener(cfg, listener)?,
            })
        };
        let info = Arc::new(Mutex::new(InstanceInfo {
            id,
            endpoint,
            app_port,
            pid: None,
            state: InstanceState::Starting,
            restarts: 0,
            last_termination: None,
            log_path,
            ever_ready: false,
        }));
        let (stop, stop_rx) = watch::channel(false);
        self.live.send_modify(|n| *n += 1);
        let record = format!("{}.{}", spec.namespace, lock(&info).id);
        let sup = Supervisor {
            shared: self.clone(),
            // A container lives in Docker's cgroup, not ours.
            cgroup: if self.uses_container(spec) {
                None
            } else {
                self.tracker.make_cgroup(&record)
            },
            record,
            key: (spec.namespace.clone(), spec.revision.clone()),
            spec: spec.clone(),
            info: info.clone(),
            stop: stop_rx,
            warm: warm.map(|w| w.id),
            container_exec,
        };
        self.handle.spawn(sup.run(queue.clone()));
        Ok(Instance { info, stop, queue })
    }
}

/// The queue-proxy settings of an instance whose app listens on `app_port` (published there
/// from a container when `in_container`).
fn queue_config(
    spec: &WorkloadSpec,
    app_port: u16,
    base: &[(String, String)],
    in_container: bool,
) -> QueueConfig {
    let t = &spec.queue;
    QueueConfig {
        app_addr: ([127, 0, 0, 1], app_port).into(),
        h2c: t.h2c,
        container_concurrency: t.container_concurrency,
        readiness: if in_container {
            container_probe(&t.readiness, spec)
        } else {
            instance_probe(&t.readiness, spec, app_port, base)
        },
        revision: t.revision.clone(),
        namespace: t.namespace.clone(),
        timeout: t.timeout,
        response_start_timeout: t.response_start_timeout,
        idle_timeout: t.idle_timeout,
        request_body_buffer: t.request_body_buffer,
        request_log: None,
    }
}

/// A free loopback port for an app, below the kernel's ephemeral range when there is room: a
/// port from that range can become the source port of any outgoing loopback connection between
/// this check and the app's bind (likely under load), one below it only another listener's.
pub(crate) fn free_port() -> std::io::Result<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_low > APP_PORT_FLOOR {
        for _ in 0..APP_PORT_TRIES {
            let port = fastrand::u16(APP_PORT_FLOOR..ephemeral_low);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// The lowest port handed to an app (above the well-known and registered services most
/// machines run).
const APP_PORT_FLOOR: u16 = 10000;
/// How many ports below the ephemeral range are tried before taking one from it.
const APP_PORT_TRIES: usize = 32;

/// Runs one instance: starts its queue-proxy, then its process, again after each exit, until
/// told to stop.
struct Supervisor {
    shared: Arc<Shared>,
    /// The instance's name in the process records and cgroups: `<namespace>.<id>`.
    record: String,
    /// The instance's cgroup, if it has one.
    cgroup: Option<PathBuf>,
    key: Key,
    spec: Arc<WorkloadSpec>,
    info: Arc<Mutex<InstanceInfo>>,
    stop: watch::Receiver<bool>,
    /// A container created ahead for the first run (its port is the instance's).
    warm: Option<String>,
    /// For a container instance: runs its exec probes inside its current container.
    container_exec: Option<Arc<ContainerExec>>,
}

/// How a run ended: its exit code or signal, or why it could not be waited for.
struct Exited {
    code: Option<i32>,
    signal: Option<i32>,
}

type ExitRx = oneshot::Receiver<Result<Exited, String>>;

/// A started run: a process or a container.
enum Run {
    Process { pid: u32 },
    Container { id: String, pid: u32 },
}

impl Run {
    fn pid(&self) -> u32 {
        match self {
            Run::Process { pid } | Run::Container { pid, .. } => *pid,
        }
    }

    fn container_id(&self) -> Option<&str> {
        match self {
            Run::Process { .. } => None,
            Run::Container { id, .. } => Some(id),
        }
    }
}

/// A run just started: what stops it, its exit, and when its app can be probed.
struct Started {
    run: Run,
    exit: ExitRx,
    listening: Pin<Box<dyn Future<Output = ()> + Send>>,
}

enum RunEnd {
    /// The process exited or could not start; restart it.
    Down,
    /// Told to stop; the process is gone.
    Stopped,
}

impl Supervisor {
    async fn run(mut self, qp: Arc<QueueProxy>) {
        self.supervise(&qp).await;
        qp.drain(Duration::from_millis(100)).await;
        if let Some(dir) = self.cgroup.clone() {
            let removed = tokio::task::spawn_blocking(move || leftovers::remove_cgroup(&dir)).await;
            if let Ok(Err(e)) = removed {
                tracing::warn!(instance = %self.record, error = %e, "cannot remove the cgroup");
            }
        }
        self.finish();
    }

    /// Kills what is left of a run (its process group, its cgroup) and forgets its record.
    fn kill_leftovers(&self, pid: u32) {
        let _ = sys::signal_group(pid, libc::SIGKILL);
        if let Some(dir) = &self.cgroup
            && let Err(e) = leftovers::kill_cgroup(dir)
        {
            tracing::warn!(instance = %self.record, error = %e, "cannot kill the cgroup");
        }
        self.shared.tracker.forget(&self.record);
    }

    async fn supervise(&mut self, qp: &QueueProxy) {
        qp.app_stopped();
        let mut backoff = BACKOFF_START;
        loop {
            if *self.stop.borrow() {
                return;
            }
            let started = Instant::now();
            if let RunEnd::Stopped = self.run_once(qp).await {
                return;
            }
            if started.elapsed() >= BACKOFF_RESET_AFTER {
                backoff = BACKOFF_START;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopped(&mut self.stop) => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            self.update(|i| i.restarts += 1);
        }
    }

    /// One run of the instance, from start to exit (or stop).
    async fn run_once(&mut self, qp: &QueueProxy) -> RunEnd {
        let app_port = lock(&self.info).app_port;
        let log_path = lock(&self.info).log_path.clone();
        let (log, offset) = match open_log(&log_path) {
            Ok(l) => l,
            Err(e) => {
                let msg = format!("log file {}: {e}", log_path.display());
                return self.down(start_failure(REASON_START, msg));
            }
        };
        let started = if self.shared.uses_container(&self.spec) {
            self.start_container(log, app_port).await
        } else {
            self.start_process(log, app_port).await
        };
        let Started {
            run,
            mut exit,
            listening,
        } = match started {
            Ok(s) => s,
            Err(t) => return self.down(t),
        };
        let pid = run.pid();
        match run.container_id() {
            None => tracing::info!(revision = %self.key.1, instance = %lock(&self.info).id, pid,
                "started"),
            Some(c) => tracing::info!(revision = %self.key.1, instance = %lock(&self.info).id, pid,
                container = &c[..12.min(c.len())], "started"),
        }
        self.update(|i| {
            i.pid = Some(pid);
            if i.state != InstanceState::Terminating {
                i.state = InstanceState::Starting;
            }
        });
        // The queue-proxy probes once the app can be reached (at once for a process) and its
        // startup probe, if any, has passed; liveness is probed only from then on too.
        let mut listening = listening;
        let mut probing = false;
        let app_probe = |l: &ProbeSpec| {
            let app = ([127, 0, 0, 1], app_port).into();
            match &self.container_exec {
                Some(runner) => {
                    let spec = container_probe(l, &self.spec);
                    let probe = AppProbe::new(spec.action.clone(), app, self.spec.queue.h2c)
                        .with_runner(runner.clone());
                    (probe, spec)
                }
                None => {
                    let spec = instance_probe(l, &self.spec, app_port, &self.shared.base_env);
                    let probe = AppProbe::new(spec.action.clone(), app, self.spec.queue.h2c);
                    (probe, spec)
                }
            }
        };
        let startup = self.spec.startup.as_ref().map(app_probe);
        let liveness = self.spec.liveness.as_ref().map(app_probe);
        let mut started_up = startup.is_none();
        let starting = async {
            match &startup {
                Some((probe, spec)) => probe_loop(probe, spec, "startup", true).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(starting);
        // Lazy: not polled (so not probing) until the startup probe has passed.
        let dead = async {
            match &liveness {
                Some((probe, spec)) => probe_loop(probe, spec, "liveness", false).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(dead);
        let mut ready = qp.ready();
        let mut ready_once = false;
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                () = &mut listening, if !probing => {
                    probing = true;
                    if started_up {
                        qp.app_started();
                    }
                }
                failed = &mut starting, if !started_up => {
                    if let Some(why) = failed {
                        let t = (STARTUP_PROBE_FAILED, why);
                        return self
                            .restart_unhealthy(qp, &run, &mut exit, t, &log_path, offset)
                            .await;
                    }
                    started_up = true;
                    if probing {
                        qp.app_started();
                    }
                }
                failed = &mut dead, if started_up => {
                    let t = (LIVENESS_PROBE_FAILED, failed.unwrap_or_default());
                    return self
                        .restart_unhealthy(qp, &run, &mut exit, t, &log_path, offset)
                        .await;
                }
                status = &mut exit => {
                    qp.app_stopped();
                    // Anything the run left behind (its group, its cgroup, its container)
                    // goes with it.
                    self.clean_run(&run).await;
                    let t = termination(status, &log_path, offset);
                    // A crash loop restarts every 10 s: warn on the first stop, then only a
                    // summary every CRASH_SUMMARY_EVERY restarts (the rest at debug).
                    let restarts = lock(&self.info).restarts;
                    if restarts == 0 {
                        tracing::warn!(revision = %self.key.1, pid, reason = %t.reason,
                            code = ?t.exit_code, signal = ?t.signal, "instance stopped");
                    } else if restarts.is_multiple_of(CRASH_SUMMARY_EVERY) {
                        tracing::warn!(revision = %self.key.1, restarts, reason = %t.reason,
                            code = ?t.exit_code, signal = ?t.signal,
                            "instance keeps stopping (crash loop); restarting with backoff");
                    } else {
                        tracing::debug!(revision = %self.key.1, pid, restarts, reason = %t.reason,
                            code = ?t.exit_code, signal = ?t.signal, "instance stopped again");
                    }
                    return self.down(t);
                }
                changed = ready.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let now = *ready.borrow_and_update();
                    ready_once |= now;
                    self.update(|i| {
                        if i.state == InstanceState::Terminating {
                            return;
                        }
                        i.ever_ready |= now;
                        i.state = match (now, ready_once) {
                            (true, _) => InstanceState::Ready,
                            (false, true) => InstanceState::NotReady,
                            (false, false) => InstanceState::Starting,
                        };
                    });
                }
                _ = stopped(&mut stop) => {
                    self.stop_run(qp, &run, &mut exit).await;
                    return RunEnd::Stopped;
                }
            }
        }
    }

    /// Spawns the instance's process, its output going to `log`.
    async fn start_process(&mut self, log: File, app_port: u16) -> Result<Started, Termination> {
        let launch = command::plan(&self.spec, app_port, &self.shared.base_env)?;
        let procs = self.cgroup.as_deref().and_then(|dir| {
            leftovers::open_procs(dir)
                .inspect_err(|e| {
                    tracing::warn!(cgroup = %dir.display(), error = %e, "cannot open cgroup.procs")
                })
                .ok()
        });
        let mut child = match sys::spawn(&launch, log, procs).await {
            Ok(c) => c,
            Err(e) => {
                let reason = match e.raw_os_error() {
                    Some(libc::ENOENT | libc::EACCES | libc::ENOEXEC | libc::ENOTDIR) => {
                        REASON_MISSING
                    }
                    _ => REASON_START,
                };
                let msg = format!("cannot run {}: {e}", launch.program.display());
                return Err(start_failure(reason, msg));
            }
        };
        let pid = child.id();
        if let Some(errno) = child.cgroup_error {
            tracing::warn!(instance = %self.record, error = %std::io::Error::from_raw_os_error(errno),
                "the process could not join its cgroup; its process group still holds it");
        }
        self.shared
            .tracker
            .record(&self.record, pid, self.cgroup.as_deref());
        let (exit_tx, exit) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            use std::os::unix::process::ExitStatusExt;
            let _ = exit_tx.send(
                child
                    .wait()
                    .map(|st| Exited {
                        code: st.code(),
                        signal: st.signal(),
                    })
                    .map_err(|e| format!("waiting for the process: {e}")),
            );
        });
        Ok(Started {
            run: Run::Process { pid },
            exit,
            listening: Box::pin(std::future::ready(())),
        })
    }

    /// Creates and starts the instance's container (its port published on `app_port`), its
    /// output followed into `log`.
    async fn start_container(&mut self, log: File, app_port: u16) -> Result<Started, Termination> {
        let cs = self.shared.containers.clone();
        let image = cs
            .image_for(&self.spec)
            .await
            .map_err(|(reason, message)| start_failure(&reason, message))?;
        let (instance, restarts) = {
            let i = lock(&self.info);
            (i.id.clone(), i.restarts)
        };
        let name = format!("rouse-{}-{instance}-{restarts}", self.spec.namespace);
        let config = cs.config(&self.spec, &image, &instance, app_port);
        let warm = self.warm.take();
        let created = match warm {
            Some(id) => Ok(id),
            None => cs.client.create(&name, &config).await,
        };
        let id = created.map_err(|e| {
            let reason = if e.is_not_found() {
                container::REASON_IMAGE
            } else {
                REASON_START
            };
            start_failure(reason, format!("cannot create the container: {e}"))
        })?;
        if let Some(runner) = &self.container_exec {
            runner.set_container(&id);
        }
        if let Err(e) = cs.client.start(&id).await {
            let _ = cs.client.remove(&id).await;
            return Err(start_failure(
                REASON_START,
                format!("cannot start the container: {e}"),
            ));
        }
        let follow = cs.clone();
        let follow_id = id.clone();
        tokio::spawn(async move {
            if let Err(e) = follow.client.follow_logs(&follow_id, log).await {
                tracing::debug!(container = %follow_id, error = %e, "container logs ended");
            }
        });
        let inspected = cs.client.inspect(&id).await.unwrap_or_default();
        let pid = inspected["State"]["Pid"].as_u64().unwrap_or(0) as u32;
        let port = self.spec.container.as_ref().map_or(8080, |c| c.port);
        let ip = inspected["NetworkSettings"]["IPAddress"]
            .as_str()
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
        let (exit_tx, exit) = oneshot::channel();
        let waiter = cs.clone();
        let wait_id = id.clone();
        tokio::spawn(async move {
            let status = waiter.client.wait(&wait_id).await.map(|code| Exited {
                code: Some(code as i32),
                signal: None,
            });
            let _ = exit_tx.send(status.map_err(|e| format!("waiting for the container: {e}")));
        });
        // Docker's port proxy accepts connections before the app listens, so a TCP probe
        // through it would pass at once: probing starts when the app answers on the
        // container's own address (where the host can reach it).
        let listening: Pin<Box<dyn Future<Output = ()> + Send>> = match ip {
            Some(ip) => Box::pin(app_listening((ip, port).into())),
            None => Box::pin(std::future::ready(())),
        };
        Ok(Started {
            run: Run::Container { id, pid },
            exit,
            listening,
        })
    }

    /// Drain, then ask the run to stop (SIGTERM), then kill it after the grace.
    async fn stop_run(&self, qp: &QueueProxy, run: &Run, exit: &mut ExitRx) {
        self.update(|i| i.state = InstanceState::Terminating);
        qp.drain(self.spec.drain_timeout).await;
        self.terminate(run);
        if tokio::time::timeout(self.shared.options.kill_grace, &mut *exit)
            .await
            .is_err()
        {
            tracing::warn!(revision = %self.key.1, pid = run.pid(), "no exit after SIGTERM; killing it");
            self.kill(run);
            let _ = exit.await;
        }
        self.clean_run(run).await;
        qp.app_stopped();
        self.update(|i| i.pid = None);
    }

    /// Ends a run whose liveness or startup probe failed (`reason` says which, and why):
    /// readiness drops at once, then SIGTERM, and SIGKILL after the grace. No drain: the app
    /// is deemed broken.
    async fn restart_unhealthy(
        &self,
        qp: &QueueProxy,
        run: &Run,
        exit: &mut ExitRx,
        (reason, why): (&str, String),
        log_path: &Path,
        offset: u64,
    ) -> RunEnd {
        tracing::warn!(revision = %self.key.1, instance = %lock(&self.info).id, pid = run.pid(),
            reason = %why, "restarting an instance that failed its {} probe",
            if reason == STARTUP_PROBE_FAILED { "startup" } else { "liveness" });
        qp.app_stopped();
        self.update(|i| {
            if i.state != InstanceState::Terminating {
                i.state = InstanceState::NotReady;
            }
        });
        self.terminate(run);
        let status = match tokio::time::timeout(self.shared.options.kill_grace, &mut *exit).await {
            Ok(status) => status,
            Err(_) => {
                tracing::warn!(revision = %self.key.1, pid = run.pid(), "no exit after SIGTERM; killing it");
                self.kill(run);
                exit.await
            }
        };
        self.clean_run(run).await;
        let t = Termination {
            reason: reason.to_string(),
            message: why,
            ..termination(status, log_path, offset)
        };
        self.down(t)
    }

    /// SIGTERM to the process group, or a container stop (its stop signal, then SIGKILL after
    /// the grace).
    fn terminate(&self, run: &Run) {
        match run {
            Run::Process { pid } => {
                if let Err(e) = sys::signal_group(*pid, libc::SIGTERM) {
                    tracing::warn!(pid, error = %e, "SIGTERM failed");
                }
            }
            Run::Container { id, .. } => {
                let cs = self.shared.containers.clone();
                let (id, grace) = (id.clone(), self.shared.options.kill_grace);
                tokio::spawn(async move {
                    if let Err(e) = cs.client.stop(&id, grace).await {
                        tracing::warn!(container = %id, error = %e, "stopping the container failed");
                    }
                });
            }
        }
    }

    fn kill(&self, run: &Run) {
        match run {
            Run::Process { pid } => {
                let _ = sys::signal_group(*pid, libc::SIGKILL);
            }
            Run::Container { id, .. } => {
                let cs = self.shared.containers.clone();
                let id = id.clone();
                tokio::spawn(async move {
                    let _ = cs.client.kill(&id).await;
                });
            }
        }
    }

    /// What is left of an ended run goes: its process group and cgroup, or its container.
    async fn clean_run(&self, run: &Run) {
        match run {
            Run::Process { pid } => self.kill_leftovers(*pid),
            Run::Container { id, .. } => {
                if let Err(e) = self.shared.containers.client.remove(id).await {
                    tracing::warn!(container = %id, error = %e, "cannot remove the container");
                }
            }
        }
    }

    fn down(&self, t: Termination) -> RunEnd {
        self.update(|i| {
            i.pid = None;
            if i.state != InstanceState::Terminating {
                i.state = InstanceState::NotReady;
            }
            i.last_termination = Some(t);
        });
        RunEnd::Down
    }

    /// Changes the instance's info and announces it, unless only its pid changed: no
    /// reconciler reads the pid, and a round of them right after a spawn competes with the
    /// app's start for the CPU.
    fn update(&self, f: impl FnOnce(&mut InstanceInfo)) {
        let changed = {
            let mut info = lock(&self.info);
            let before = info.clone();
            f(&mut info);
            *info
                != InstanceInfo {
                    pid: info.pid,
                    ..before
                }
        };
        if changed {
            self.shared.notify(&self.key);
        }
    }

    /// Forgets the instance (and its revision once it has none).
    fn finish(&self) {
        {
            let mut revs = lock(&self.shared.revisions);
            if let Some(e) = revs.get_mut(&self.key) {
                e.instances.retain(|i| !Arc::ptr_eq(&i.info, &self.info));
                if e.instances.is_empty() {
                    revs.remove(&self.key);
                }
            }
        }
        let mut none_left = false;
        self.shared.live.send_modify(|n| {
            *n -= 1;
            none_left = *n == 0;
        });
        if none_left {
            self.shared.tracker.remove_parent();
        }
        self.shared.notify(&self.key);
        self.shared.notify_refused();
    }
}

/// Tries a probe every period (10 s when zero) from its initial delay on. Resolves with why
/// once it has failed `failure_threshold` times in a row; with `until_pass` (a startup probe),
/// with `None` at its first pass instead.
async fn probe_loop(
    probe: &AppProbe,
    spec: &ProbeSpec,
    what: &str,
    until_pass: bool,
) -> Option<String> {
    tokio::time::sleep(spec.initial_delay).await;
    let period = if spec.period.is_zero() {
        LIVENESS_PERIOD
    } else {
        spec.period
    };
    let timeout = spec.effective_timeout();
    let threshold = spec.effective_failure_threshold();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0;
    loop {
        tick.tick().await;
        match probe.check(timeout).await {
            Ok(()) if until_pass => return None,
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::debug!(probe = %probe.action(), failures, error = %e,
                    "{what} probe failed");
                if failures >= threshold {
                    let times = if failures == 1 { "time" } else { "times" };
                    return Some(format!(
                        "{what} probe {} failed {failures} {times} in a row: {e}",
                        probe.action()
                    ));
                }
            }
        }
    }
}

/// Resolves once a stop is requested (or the runtime is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Opens the instance's log for appending; returns it and where this run's output starts.
fn open_log(path: &Path) -> std::io::Result<(File, u64)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let offset = file.metadata()?.len();
    Ok((file, offset))
}

fn termination(
    status: Result<Result<Exited, String>, oneshot::error::RecvError>,
    log: &Path,
    offset: u64,
) -> Termination {
    let message = log_tail(log, offset).unwrap_or_default();
    match status {
        Ok(Ok(st)) => Termination {
            exit_code: st.code,
            signal: st.signal,
            reason: if st.code == Some(0) {
                "Completed"
            } else {
                "Error"
            }
            .to_string(),
            message,
        },
        Ok(Err(e)) => start_failure("Error", e),
        Err(_) => start_failure("Error", "lost track of the process".into()),
    }
}

/// Resolves once a TCP connection to `addr` succeeds (tried every 20 ms).
async fn app_listening(addr: std::net::SocketAddr) {
    loop {
        let attempt =
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr));
        if let Ok(Ok(_)) = attempt.await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The last lines written to `path` since `offset`.
fn log_tail(path: &Path, offset: u64) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    // A rotation since the run started truncated the file: its output is all there is.
    let offset = if offset > len { 0 } else { offset };
    let from = offset.max(len.saturating_sub(TAIL_BYTES));
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(TAIL_LINES);
    Ok(lines[skip..].join("\n"))
}

/// Every [`HOUSEKEEPING`] period, while the runtime lives: rotates instances' logs past the
/// size limit and removes the logs of revisions removed longer ago than the retention.
async fn housekeeping(shared: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(HOUSEKEEPING);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(sh) = shared.upgrade() else { return };
        if sh.closing.load(Ordering::SeqCst) {
            return;
        }
        let logs: Vec<PathBuf> = lock(&sh.revisions)
            .values()
            .flat_map(|e| e.instances.iter().map(|i| lock(&i.info).log_path.clone()))
            .collect();
        let now = Instant::now();
        let due: Vec<Key> = {
            let mut removals = lock(&sh.log_removals);
            let due: Vec<Key> = removals
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(k, _)| k.clone())
                .collect();
            due.iter().for_each(|k| {
                removals.remove(k);
            });
            due
        };
        // Still running (re-created): not removed.
        let due: Vec<PathBuf> = {
            let revs = lock(&sh.revisions);
            due.into_iter()
                .filter(|k| !revs.contains_key(k))
                .map(|(ns, rev)| logs::revision_dir(&sh.data_dir, &ns, &rev))
                .collect()
        };
        let (max_bytes, max_files) = (sh.options.log_max_bytes, sh.options.log_max_files);
        drop(sh);
        let _ = tokio::task::spawn_blocking(move || {
            for log in logs {
                if let Err(e) = logs::rotate_if_big(&log, max_bytes, max_files) {
                    tracing::warn!(log = %log.display(), error = %e, "cannot rotate a log");
                }
            }
            for dir in due {
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => {
                        tracing::info!(dir = %dir.display(), "removed a deleted revision's logs")
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove logs")
                    }
                }
            }
        })
        .await;
    }
}

//! The local process backend: each instance is a child process behind an in-process
//! queue-proxy.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rouse_queue::{AppProbe, ProbeSpec, QueueConfig, QueueProxy, QueueStats};
use tokio::runtime::Handle;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::time::Instant;

use crate::command::{self, REASON_MISSING, REASON_START, instance_probe, start_failure};
use crate::spec::{InstanceInfo, InstanceState, LIVENESS_PROBE_FAILED, Termination, WorkloadSpec};
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

type Key = (String, String);

/// Runs revisions as local processes: each instance gets a free `PORT`, a log file under
/// `<data_dir>/logs/<namespace>/<revision>/<instance>.log` and a queue-proxy in front.
/// Crashed processes restart with exponential backoff; every process dies with the platform.
pub struct ProcessRuntime {
    shared: Arc<Shared>,
}

struct Shared {
    data_dir: PathBuf,
    handle: Handle,
    kill_grace: Duration,
    revisions: Mutex<HashMap<Key, RevisionEntry>>,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the runtime down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ProcessRuntime {
    /// A runtime keeping logs under `data_dir`. Must be called inside a Tokio runtime, which
    /// then runs the instances' supervisors.
    pub fn new(data_dir: PathBuf) -> Arc<Self> {
        Self::with_kill_grace(data_dir, KILL_GRACE)
    }

    /// Like [`ProcessRuntime::new`] with another SIGTERM-to-SIGKILL grace.
    pub fn with_kill_grace(data_dir: PathBuf, kill_grace: Duration) -> Arc<Self> {
        let (events, _) = broadcast::channel(1024);
        let (live, _) = watch::channel(0);
        Arc::new(ProcessRuntime {
            shared: Arc::new(Shared {
                data_dir,
                handle: Handle::current(),
                kill_grace,
                revisions: Mutex::new(HashMap::new()),
                events,
                closing: AtomicBool::new(false),
                live,
            }),
        })
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
        let mut revs = lock(&sh.revisions);
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
        if active.len() < desired {
            for _ in active.len()..desired {
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
            }
        }
        if entry.instances.is_empty() {
            revs.remove(&key);
        }
        drop(revs);
        if changed {
            sh.notify(&key);
        }
    }

    fn instances(&self, namespace: &str, revision: &str) -> Vec<InstanceInfo> {
        let revs = lock(&self.shared.revisions);
        revs.get(&(namespace.to_string(), revision.to_string()))
            .map(|e| e.instances.iter().map(|i| lock(&i.info).clone()).collect())
            .unwrap_or_default()
    }

    fn scrape(&self, namespace: &str, revision: &str) -> Vec<(String, QueueStats)> {
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
        queues
            .into_iter()
            .map(|(id, q)| (id, q.take_stats()))
            .collect()
    }

    fn remove(&self, namespace: &str, revision: &str) {
        let key = (namespace.to_string(), revision.to_string());
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
        })
    }
}

impl Shared {
    fn notify(&self, key: &Key) {
        let _ = self.events.send(key.clone());
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
        let app_port = free_port()?;
        let qp_listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        qp_listener.set_nonblocking(true)?;
        let endpoint = qp_listener.local_addr()?;
        let queue = {
            // The queue-proxy spawns its tasks on the runtime's Tokio runtime.
            let _rt = self.handle.enter();
            let listener = tokio::net::TcpListener::from_std(qp_listener)?;
            Arc::new(QueueProxy::with_listener(
                queue_config(spec, app_port),
                listener,
            )?)
        };
        let log_path = self
            .data_dir
            .join("logs")
            .join(&spec.namespace)
            .join(&spec.revision)
            .join(format!("{id}.log"));
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
        let sup = Supervisor {
            shared: self.clone(),
            key: (spec.namespace.clone(), spec.revision.clone()),
            spec: spec.clone(),
            info: info.clone(),
            stop: stop_rx,
        };
        self.handle.spawn(sup.run(queue.clone()));
        Ok(Instance { info, stop, queue })
    }
}

/// The queue-proxy settings of an instance whose app listens on `app_port`.
fn queue_config(spec: &WorkloadSpec, app_port: u16) -> QueueConfig {
    let t = &spec.queue;
    QueueConfig {
        app_addr: ([127, 0, 0, 1], app_port).into(),
        h2c: t.h2c,
        container_concurrency: t.container_concurrency,
        readiness: instance_probe(&t.readiness, spec, app_port),
        revision: t.revision.clone(),
        namespace: t.namespace.clone(),
        timeout: t.timeout,
        response_start_timeout: t.response_start_timeout,
        idle_timeout: t.idle_timeout,
        request_body_buffer: t.request_body_buffer,
    }
}

/// A free loopback port for an app (the OS may hand it out again later, but rarely soon).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// Runs one instance: starts its queue-proxy, then its process, again after each exit, until
/// told to stop.
struct Supervisor {
    shared: Arc<Shared>,
    key: Key,
    spec: Arc<WorkloadSpec>,
    info: Arc<Mutex<InstanceInfo>>,
    stop: watch::Receiver<bool>,
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
        self.finish();
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

    /// One run of the process, from spawn to exit (or stop).
    async fn run_once(&mut self, qp: &QueueProxy) -> RunEnd {
        let app_port = lock(&self.info).app_port;
        let launch = match command::plan(&self.spec, app_port) {
            Ok(l) => l,
            Err(t) => return self.down(t),
        };
        let log_path = lock(&self.info).log_path.clone();
        let (log, offset) = match open_log(&log_path) {
            Ok(l) => l,
            Err(e) => {
                let msg = format!("log file {}: {e}", log_path.display());
                return self.down(start_failure(REASON_START, msg));
            }
        };
        let mut child = match sys::spawn(&launch, log).await {
            Ok(c) => c,
            Err(e) => {
                let reason = match e.raw_os_error() {
                    Some(libc::ENOENT | libc::EACCES | libc::ENOEXEC | libc::ENOTDIR) => {
                        REASON_MISSING
                    }
                    _ => REASON_START,
                };
                let msg = format!("cannot run {}: {e}", launch.program.display());
                return self.down(start_failure(reason, msg));
            }
        };
        let pid = child.id();
        tracing::info!(revision = %self.key.1, instance = %lock(&self.info).id, pid, "started");
        qp.app_started();
        self.update(|i| {
            i.pid = Some(pid);
            if i.state != InstanceState::Terminating {
                i.state = InstanceState::Starting;
            }
        });
        let (exit_tx, mut exit_rx) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let _ = exit_tx.send(child.wait());
        });
        let liveness = self.spec.liveness.as_ref().map(|l| {
            let spec = instance_probe(l, &self.spec, app_port);
            let app = ([127, 0, 0, 1], app_port).into();
            (
                AppProbe::new(spec.action.clone(), app, self.spec.queue.h2c),
                spec,
            )
        });
        let dead = async {
            match &liveness {
                Some((probe, spec)) => liveness_failure(probe, spec).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(dead);
        let mut ready = qp.ready();
        let mut ready_once = false;
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                why = &mut dead => {
                    return self
                        .restart_unhealthy(qp, pid, &mut exit_rx, why, &log_path, offset)
                        .await;
                }
                status = &mut exit_rx => {
                    qp.app_stopped();
                    // Anything the process left behind in its group goes with it.
                    let _ = sys::signal_group(pid, libc::SIGKILL);
                    let t = termination(status, &log_path, offset);
                    tracing::warn!(revision = %self.key.1, pid, reason = %t.reason,
                        code = ?t.exit_code, signal = ?t.signal, "process stopped");
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
                    self.stop_process(qp, pid, &mut exit_rx).await;
                    return RunEnd::Stopped;
                }
            }
        }
    }

    /// Drain, SIGTERM, then SIGKILL after the grace.
    async fn stop_process(
        &self,
        qp: &QueueProxy,
        pid: u32,
        exit: &mut oneshot::Receiver<std::io::Result<ExitStatus>>,
    ) {
        self.update(|i| i.state = InstanceState::Terminating);
        qp.drain(self.spec.drain_timeout).await;
        if let Err(e) = sys::signal_group(pid, libc::SIGTERM) {
            tracing::warn!(pid, error = %e, "SIGTERM failed");
        }
        if tokio::time::timeout(self.shared.kill_grace, &mut *exit)
            .await
            .is_err()
        {
            tracing::warn!(revision = %self.key.1, pid, "no exit after SIGTERM; sending SIGKILL");
            let _ = sys::signal_group(pid, libc::SIGKILL);
            let _ = exit.await;
        }
        let _ = sys::signal_group(pid, libc::SIGKILL);
        qp.app_stopped();
        self.update(|i| i.pid = None);
    }

    /// Ends a run whose liveness probe failed: readiness drops at once, then SIGTERM, and
    /// SIGKILL after the grace. No drain: the app is deemed broken.
    async fn restart_unhealthy(
        &self,
        qp: &QueueProxy,
        pid: u32,
        exit: &mut oneshot::Receiver<std::io::Result<ExitStatus>>,
        why: String,
        log_path: &Path,
        offset: u64,
    ) -> RunEnd {
        tracing::warn!(revision = %self.key.1, instance = %lock(&self.info).id, pid,
            reason = %why, "restarting an instance that failed its liveness probe");
        qp.app_stopped();
        self.update(|i| {
            if i.state != InstanceState::Terminating {
                i.state = InstanceState::NotReady;
            }
        });
        if let Err(e) = sys::signal_group(pid, libc::SIGTERM) {
            tracing::warn!(pid, error = %e, "SIGTERM failed");
        }
        let status = match tokio::time::timeout(self.shared.kill_grace, &mut *exit).await {
            Ok(status) => status,
            Err(_) => {
                tracing::warn!(revision = %self.key.1, pid, "no exit after SIGTERM; sending SIGKILL");
                let _ = sys::signal_group(pid, libc::SIGKILL);
                exit.await
            }
        };
        let _ = sys::signal_group(pid, libc::SIGKILL);
        let t = Termination {
            reason: LIVENESS_PROBE_FAILED.to_string(),
            message: why,
            ..termination(status, log_path, offset)
        };
        self.down(t)
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
        self.shared.live.send_modify(|n| *n -= 1);
        self.shared.notify(&self.key);
    }
}

/// Resolves when the liveness probe has failed `failure_threshold` times in a row (tries
/// every period from the initial delay on), with a message saying which probe and how.
async fn liveness_failure(probe: &AppProbe, spec: &ProbeSpec) -> String {
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
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::debug!(probe = %probe.action(), failures, error = %e,
                    "liveness probe failed");
                if failures >= threshold {
                    let times = if failures == 1 { "time" } else { "times" };
                    return format!(
                        "liveness probe {} failed {failures} {times} in a row: {e}",
                        probe.action()
                    );
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
    status: Result<std::io::Result<ExitStatus>, oneshot::error::RecvError>,
    log: &Path,
    offset: u64,
) -> Termination {
    use std::os::unix::process::ExitStatusExt;
    let message = log_tail(log, offset).unwrap_or_default();
    match status {
        Ok(Ok(st)) => Termination {
            exit_code: st.code(),
            signal: st.signal(),
            reason: if st.success() { "Completed" } else { "Error" }.to_string(),
            message,
        },
        Ok(Err(e)) => start_failure("Error", format!("waiting for the process: {e}")),
        Err(_) => start_failure("Error", "lost track of the process".into()),
    }
}

/// The last lines written to `path` since `offset`.
fn log_tail(path: &Path, offset: u64) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let from = offset.max(len.saturating_sub(TAIL_BYTES));
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(TAIL_LINES);
    Ok(lines[skip..].join("\n"))
}

//! A test kubelet for a real Kubernetes control plane that has none: it registers a Node
//! (Ready, with allocatable cpu, memory and pods, its Lease in `kube-node-lease` renewed),
//! lets kube-scheduler bind pods to it (binding pods itself that stay unscheduled, for a
//! control plane without a scheduler), and runs each bound pod's containers as real processes
//! in a network namespace of the pod's own (10.244.0.0/16, the host at 10.244.0.1 on a
//! bridge), so every pod binds its ports on its own IP as a real pod does and this machine
//! reaches them.
//!
//! Images map to binaries on this machine ([`Images`]). Per container it does what the
//! kubelet does: the environment the pod spec states (values, field references, ConfigMap and
//! Secret keys), startup, liveness and readiness probes (httpGet, tcpSocket, exec) on their
//! schedule, a restart with back-off when the process exits or its liveness probe fails
//! (restartCount, lastState with the exit code and, for FallbackToLogsOnError, the log's
//! tail), and on deletion the preStop hook, SIGTERM, the grace period, SIGKILL, then the
//! network namespace removed and the pod object deleted. The pod's status (IP, phase,
//! conditions, container states) is patched as it changes.
//!
//! Readiness probes run as the kubelet's do: the pod sync that follows the container's start
//! (its PLEG relists every second) runs the probe, the sync after a changed result runs it
//! again while the container is not ready, and otherwise it runs every `periodSeconds`.
//!
//! Differences from the real kubelet, on purpose: the crash back-off starts at 1 s and stops
//! growing at 10 s (the kubelet's 10 s to 5 min would outlast the cases); no images are pulled,
//! no cgroups, mounts or users are set up (processes run as the test's user unless the pod
//! asks for `runAsUser`/`runAsGroup`); gRPC probes fail.

mod container;
mod net;

pub use container::{ImageBinary, Images};

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Container, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent};
use kube::api::{Preconditions, WatchParams};
use rouse_api::clock::now_rfc3339;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, watch};

/// The Node's name.
pub const NODE: &str = "rouse-test-kubelet";
/// How often the Node's Lease and status are renewed (the kubelet's default is 10 s).
const HEARTBEAT: Duration = Duration::from_secs(10);
/// A pod still unscheduled after this long is bound by the kubelet itself.
const BIND_AFTER: Duration = Duration::from_secs(5);
/// How often the kubelet's PLEG relists containers (its default): a started container is
/// noticed, and its first readiness probe run, within this.
const RELIST: Duration = Duration::from_secs(1);
/// The crash back-off: first delay and cap.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(10));

/// The kubelet's own log (`dir/kubelet.log`): pods started and stopped, containers started,
/// exited and becoming ready, with the time since the pod was seen.
static LOG: std::sync::OnceLock<Mutex<std::fs::File>> = std::sync::OnceLock::new();

fn note(line: std::fmt::Arguments) {
    if let Some(f) = LOG.get() {
        use std::io::Write;
        let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(f, "{} {line}", rouse_api::clock::now_rfc3339());
    }
}

/// A running test kubelet; the pod processes end with the test process.
pub struct Kubelet {
    logs: PathBuf,
}

impl Kubelet {
    /// Removes what an earlier run left (namespaces, interfaces), sets up the bridge,
    /// registers the Node and starts following its pods. `dir` holds the containers' logs.
    pub fn start(kubeconfig: &Path, images: Images, dir: &Path) -> Result<Kubelet, String> {
        net::remove_all();
        net::bridge()?;
        let logs = dir.join("pods");
        std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
        if let Ok(f) = std::fs::File::create(dir.join("kubelet.log")) {
            let _ = LOG.set(Mutex::new(f));
        }
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let kubeconfig = kubeconfig.to_path_buf();
        let logs_dir = logs.clone();
        // One thread for the kubelet's whole life: the pods' processes die with the thread
        // that started them (PR_SET_PDEATHSIG), and this one lives as long as the tests.
        std::thread::Builder::new()
            .name("test-kubelet".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                rt.block_on(async move {
                    match setup(&kubeconfig).await {
                        Ok(client) => {
                            let _ = ready_tx.send(Ok(()));
                            run(client, Arc::new(images), logs_dir).await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(|e| e.to_string())?;
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| "the test kubelet did not register its Node within 60 s".to_string())??;
        remove_at_exit();
        Ok(Kubelet { logs })
    }

    /// What the containers of a revision's pods wrote (every container, in pod and container
    /// name order).
    pub fn logs(&self, namespace: &str, revision: &str) -> String {
        crate::common::concat_files(&self.logs.join(namespace).join(revision))
    }
}

/// Namespaces and interfaces go when the test process ends normally (libtest's exit runs
/// atexit handlers); a killed run's are removed by the next one's start.
#[allow(unsafe_code)]
fn remove_at_exit() {
    extern "C" fn cleanup() {
        net::remove_all();
    }
    // SAFETY: registering a plain function without arguments to run at exit.
    unsafe { libc::atexit(cleanup) };
}

async fn setup(kubeconfig: &Path) -> Result<kube::Client, String> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| e.to_string())?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| e.to_string())?;
    let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": NODE, "labels": {
            "kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
        }},
    }))
    .map_err(|e| e.to_string())?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(format!("registering Node {NODE}: {e}")),
    }
    heartbeat(&client).await?;
    Ok(client)
}

/// Renews the Node's Lease and reports it Ready with its capacity and address.
async fn heartbeat(client: &kube::Client) -> Result<(), String> {
    let now = now_rfc3339();
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "kube-node-lease");
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": NODE, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": NODE, "leaseDurationSeconds": 40,
                 "renewTime": now.replace('Z', ".000000Z")},
    });
    leases
        .patch(
            NODE,
            &PatchParams::apply("rouse-test-kubelet").force(),
            &Patch::Apply(&lease),
        )
        .await
        .map_err(|e| format!("renewing the Node's Lease: {e}"))?;
    let condition = |type_: &str, status: &str, reason: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": reason,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let resources = json!({"cpu": "8", "memory": "16Gi", "pods": "250"});
    let status = json!({"status": {
        "capacity": resources, "allocatable": resources,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID"),
            condition("Ready", "True", "KubeletReady"),
        ],
        "addresses": [{"type": "InternalIP", "address": net::HOST_IP.to_string()},
                      {"type": "Hostname", "address": NODE}],
        "nodeInfo": {"kubeletVersion": "v1.36.0-rouse-test", "operatingSystem": "linux",
                     "architecture": "amd64", "containerRuntimeVersion": "processes://0",
                     "kernelVersion": "", "osImage": "", "kubeProxyVersion": "",
                     "machineID": "", "systemUUID": "", "bootID": ""},
    }});
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch_status(NODE, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(|e| format!("reporting Node {NODE} Ready: {e}"))?;
    Ok(())
}

/// What the main loop keeps per pod it runs.
struct Running {
    stop: watch::Sender<Option<i64>>,
}

async fn run(client: kube::Client, images: Arc<Images>, logs: PathBuf) {
    let hb = client.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            if let Err(e) = heartbeat(&hb).await {
                eprintln!("test kubelet: {e}");
            }
        }
    });
    tokio::spawn(bind_unscheduled(client.clone()));
    let pods: Api<Pod> = Api::all(client.clone());
    let mut running: HashMap<String, Running> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut next_ip = 0u32;
    let fields = format!("spec.nodeName={NODE}");
    loop {
        // List, then watch from the list's version; on any failure list again.
        let list = match pods.list(&ListParams::default().fields(&fields)).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("test kubelet: listing pods: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let version = list.metadata.resource_version.clone().unwrap_or_default();
        for pod in list.items {
            observe(
                &client,
                pod,
                false,
                &mut running,
                &images,
                &logs,
                &done_tx,
                &mut next_ip,
            );
        }
        let wp = WatchParams::default().fields(&fields).timeout(290);
        let stream = match pods.watch(&wp, &version).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("test kubelet: watching pods: {e}");
                continue;
            }
        };
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                ev = stream.next() => match ev {
                    Some(Ok(WatchEvent::Added(pod) | WatchEvent::Modified(pod))) => observe(
                        &client, pod, false, &mut running, &images, &logs, &done_tx, &mut next_ip,
                    ),
                    Some(Ok(WatchEvent::Deleted(pod))) => observe(
                        &client, pod, true, &mut running, &images, &logs, &done_tx, &mut next_ip,
                    ),
                    Some(Ok(WatchEvent::Bookmark(_))) => {}
                    Some(Ok(WatchEvent::Error(_)) | Err(_)) | None => break,
                },
                Some(uid) = done_rx.recv() => {
                    running.remove(&uid);
                }
            }
        }
    }
}

/// Starts a pod new to this kubelet, or stops one being deleted.
#[allow(clippy::too_many_arguments)]
fn observe(
    client: &kube::Client,
    pod: Pod,
    gone: bool,
    running: &mut HashMap<String, Running>,
    images: &Arc<Images>,
    logs: &Path,
    done: &mpsc::UnboundedSender<String>,
    next_ip: &mut u32,
) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let deleting = gone || pod.metadata.deletion_timestamp.is_some();
    if let Some(r) = running.get(&uid) {
        if deleting && r.stop.borrow().is_none() {
            let grace = if gone {
                0
            } else {
                pod.metadata.deletion_grace_period_seconds.unwrap_or(30)
            };
            let _ = r.stop.send(Some(grace));
        }
        return;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
    if matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
        return;
    }
    if deleting {
        // Never run here (an earlier kubelet's): nothing to stop, let the object go.
        if !gone {
            tokio::spawn(force_delete(client.clone(), pod));
        }
        return;
    }
    let (stop, stop_rx) = watch::channel(None);
    running.insert(uid.clone(), Running { stop });
    let n = *next_ip;
    *next_ip += 1;
    let worker = PodWorker {
        seen: Instant::now(),
        client: client.clone(),
        pod,
        images: images.clone(),
        logs: logs.to_path_buf(),
    };
    let done = done.clone();
    tokio::spawn(async move {
        worker.run(n, stop_rx).await;
        let _ = done.send(uid);
    });
}

/// Deletes the pod object at once (the kubelet's last word on a pod it stopped).
async fn force_delete(client: kube::Client, pod: Pod) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client, &ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    let _ = api.delete(&name, &dp).await;
}

/// Binds pods nobody scheduled within [`BIND_AFTER`] to this Node (for a control plane
/// without kube-scheduler; with one, it has long bound them).
async fn bind_unscheduled(client: kube::Client) {
    let pods: Api<Pod> = Api::all(client.clone());
    let mut first_seen: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let lp = ListParams::default().fields("spec.nodeName=,status.phase=Pending");
        let Ok(list) = pods.list(&lp).await else {
            continue;
        };
        let mut seen = HashMap::new();
        for pod in list.items {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let since = *first_seen.get(&uid).unwrap_or(&Instant::now());
            seen.insert(uid, since);
            if since.elapsed() < BIND_AFTER || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let binding = json!({
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": name, "namespace": ns},
                "target": {"apiVersion": "v1", "kind": "Node", "name": NODE},
            });
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let _ = api
                .create_subresource::<_, Value>("binding", &name, &PostParams::default(), &binding)
                .await;
        }
        first_seen = seen;
    }
}

/// The state of one container as its status reports it.
#[derive(Clone, Debug, Default)]
struct ContainerState {
    /// `running`, `waiting` or `terminated`, as the status' `state` object.
    state: Value,
    last: Value,
    restarts: i32,
    started: bool,
    ready: bool,
    /// Changed on every start, so the probes of an earlier run stop reporting.
    run: u64,
}

/// The pod's shared state between its containers' tasks and its status reporter.
struct PodShared {
    containers: Mutex<Vec<ContainerState>>,
    changed: Notify,
}

impl PodShared {
    fn update(&self, i: usize, f: impl FnOnce(&mut ContainerState)) {
        {
            let mut cs = self.containers.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut cs[i]);
        }
        self.changed.notify_one();
    }
}

/// Runs one pod until it is deleted.
struct PodWorker {
    /// When the kubelet first saw the pod.
    seen: Instant,
    client: kube::Client,
    pod: Pod,
    images: Arc<Images>,
    logs: PathBuf,
}

fn waiting(reason: &str, message: &str) -> Value {
    json!({"waiting": {"reason": reason, "message": message}})
}

impl PodWorker {
    fn ns(&self) -> String {
        self.pod.metadata.namespace.clone().unwrap_or_default()
    }
    fn name(&self) -> String {
        self.pod.metadata.name.clone().unwrap_or_default()
    }
    fn containers(&self) -> Vec<Container> {
        self.pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default()
    }

    async fn run(mut self, n: u32, mut stop: watch::Receiver<Option<i64>>) {
        let net = match tokio::task::spawn_blocking(move || net::PodNet::create(n)).await {
            Ok(Ok(net)) => net,
            Ok(Err(e)) => {
                eprintln!("test kubelet: pod network for {}: {e}", self.name());
                let _ = stop.wait_for(|s| s.is_some()).await;
                force_delete(self.client.clone(), self.pod.clone()).await;
                return;
            }
            Err(e) => {
                eprintln!("test kubelet: {e}");
                return;
            }
        };
        let ip = IpAddr::V4(net.ip);
        // The pod as its containers see it: field references to its IP resolve.
        let mut status = self.pod.status.clone().unwrap_or_default();
        status.pod_ip = Some(ip.to_string());
        status.host_ip = Some(net::HOST_IP.to_string());
        self.pod.status = Some(status);
        let revision = self
            .pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("serving.knative.dev/revision").cloned())
            .unwrap_or_else(|| "-".into());
        let log_dir = self.logs.join(self.ns()).join(&revision);
        let _ = std::fs::create_dir_all(&log_dir);
        let containers = self.containers();
        let shared = Arc::new(PodShared {
            containers: Mutex::new(
                containers
                    .iter()
                    .map(|_| ContainerState {
                        state: waiting("ContainerCreating", ""),
                        ..Default::default()
                    })
                    .collect(),
            ),
            changed: Notify::new(),
        });
        let started_at = now_rfc3339();
        let this = Arc::new(self);
        let reporter = tokio::spawn(this.clone().report(shared.clone(), ip, started_at));
        let mut tasks = Vec::new();
        for (i, c) in containers.into_iter().enumerate() {
            let log = log_dir.join(format!("{}-{}.log", this.name(), c.name));
            tasks.push(tokio::spawn(this.clone().container(
                i,
                c,
                net.path(),
                log,
                ip,
                shared.clone(),
                stop.clone(),
            )));
        }
        for t in tasks {
            let _ = t.await;
        }
        shared.changed.notify_one();
        reporter.abort();
        let _ = tokio::task::spawn_blocking(move || net.remove()).await;
        force_delete(this.client.clone(), this.pod.clone()).await;
    }

    /// The data of the ConfigMaps and Secrets the container's environment refers to, read
    /// now (`env` keys and `envFrom`).
    async fn referenced(
        &self,
        c: &Container,
    ) -> HashMap<(&'static str, String), BTreeMap<String, String>> {
        let mut names: Vec<(&'static str, String)> = Vec::new();
        for from in c.env.iter().flatten().filter_map(|e| e.value_from.as_ref()) {
            if let Some(r) = &from.config_map_key_ref {
                names.push(("configmaps", r.name.clone()));
            }
            if let Some(r) = &from.secret_key_ref {
                names.push(("secrets", r.name.clone()));
            }
        }
        for from in c.env_from.iter().flatten() {
            if let Some(r) = &from.config_map_ref {
                names.push(("configmaps", r.name.clone()));
            }
            if let Some(r) = &from.secret_ref {
                names.push(("secrets", r.name.clone()));
            }
        }
        let mut values = HashMap::new();
        for (kind, name) in names {
            let ns = self.ns();
            let data = if kind == "configmaps" {
                let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
                    Api::namespaced(self.client.clone(), &ns);
                api.get(&name)
                    .await
                    .ok()
                    .map(|cm| cm.data.unwrap_or_default())
            } else {
                let api: Api<k8s_openapi::api::core::v1::Secret> =
                    Api::namespaced(self.client.clone(), &ns);
                api.get(&name).await.ok().map(|s| {
                    s.data
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|(k, v)| Some((k, String::from_utf8(v.0).ok()?)))
                        .collect()
                })
            };
            if let Some(data) = data {
                values.insert((kind, name), data);
            }
        }
        values
    }

    /// One container: start, probe, restart with back-off, and stop when the pod goes.
    #[allow(clippy::too_many_arguments)]
    async fn container(
        self: Arc<Self>,
        i: usize,
        c: Container,
        netns_path: String,
        log: PathBuf,
        ip: IpAddr,
        shared: Arc<PodShared>,
        mut stop: watch::Receiver<Option<i64>>,
    ) {
        let mut backoff = BACKOFF.0;
        let grace_default = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        let image = c.image.clone().unwrap_or_default();
        loop {
            if stop.borrow().is_some() {
                return;
            }
            let values = self.referenced(&c).await;
            let lookup = |kind: &str, name: &str| {
                values
                    .iter()
                    .find(|((k, n), _)| *k == kind && n == name)
                    .map(|(_, d)| d.clone())
            };
            let launch =
                match container::launch(&self.pod, &c, &self.images, &netns_path, &log, &lookup) {
                    Ok(l) => l,
                    Err(e) => {
                        shared.update(i, |s| s.state = waiting(e.reason, &e.message));
                        if wait_or_stop(&mut stop, backoff).await {
                            return;
                        }
                        backoff = (backoff * 2).min(BACKOFF.1);
                        continue;
                    }
                };
            let started_at = now_rfc3339();
            let mut child = match container::spawn(&launch) {
                Ok(child) => child,
                Err(e) => {
                    let message = format!(
                        "failed to start container {:?}: exec: {:?}: {e}",
                        c.name,
                        launch.program.display().to_string()
                    );
                    let terminated = json!({"exitCode": 128, "reason": "StartError",
                        "message": message, "startedAt": started_at, "finishedAt": now_rfc3339()});
                    shared.update(i, |s| {
                        s.last = json!({"terminated": terminated});
                        s.restarts += 1;
                        s.state = waiting(
                            "CrashLoopBackOff",
                            &format!("back-off restarting failed container {}", c.name),
                        );
                    });
                    if wait_or_stop(&mut stop, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF.1);
                    continue;
                }
            };
            let pid = child.id().unwrap_or(0);
            note(format_args!(
                "{}/{} {}: started pid {pid} after {:?}",
                self.ns(),
                self.name(),
                c.name,
                self.seen.elapsed()
            ));
            let mut run = 0;
            shared.update(i, |s| {
                s.run += 1;
                run = s.run;
                s.state = json!({"running": {"startedAt": started_at}});
                s.started = c.startup_probe.is_none();
                s.ready = false;
            });
            let (fail_tx, mut fail_rx) = mpsc::channel::<String>(1);
            let probes = tokio::spawn(probe_loop(
                c.clone(),
                ip,
                launch.clone(),
                shared.clone(),
                i,
                run,
                fail_tx,
            ));
            let ran = Instant::now();
            let finish = |code: i32, reason: &str, message: String| {
                json!({"terminated": {"exitCode": code, "reason": reason, "message": message,
                    "startedAt": started_at, "finishedAt": now_rfc3339()}})
            };
            enum Ended {
                Exited(Option<std::process::ExitStatus>),
                ProbeFailed(String),
                Stopped,
            }
            let ended = tokio::select! {
                exit = child.wait() => Ended::Exited(exit.ok()),
                Some(why) = fail_rx.recv() => Ended::ProbeFailed(why),
                _ = stop.wait_for(|s| s.is_some()) => Ended::Stopped,
            };
            probes.abort();
            note(format_args!(
                "{}/{} {}: {} after {:?}",
                self.ns(),
                self.name(),
                c.name,
                match &ended {
                    Ended::Exited(e) => format!("exited ({e:?})"),
                    Ended::ProbeFailed(why) => why.clone(),
                    Ended::Stopped => "stopping".into(),
                },
                self.seen.elapsed()
            ));
            match ended {
                Ended::Exited(exit) => {
                    let code = exit.map(exit_code).unwrap_or(128);
                    let fallback =
                        c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
                    let message = if code != 0 && fallback {
                        container::log_tail(&log)
                    } else {
                        String::new()
                    };
                    let reason = if code == 0 { "Completed" } else { "Error" };
                    let last = finish(code, reason, message);
                    if ran.elapsed() > Duration::from_secs(600) {
                        backoff = BACKOFF.0;
                    }
                    shared.update(i, |s| {
                        s.last = last;
                        s.restarts += 1;
                        s.ready = false;
                        s.started = false;
                        s.state = waiting(
                            "CrashLoopBackOff",
                            &format!(
                                "back-off {}s restarting failed container={} ({image})",
                                backoff.as_secs(),
                                c.name
                            ),
                        );
                    });
                    if wait_or_stop(&mut stop, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF.1);
                }
                Ended::ProbeFailed(why) => {
                    // A failed liveness or startup probe: killed as on deletion, then started
                    // again.
                    shared.update(i, |s| s.ready = false);
                    let code = terminate(&c, pid, &mut child, ip, &launch, grace_default).await;
                    let last = finish(code, "Error", why);
                    shared.update(i, |s| {
                        s.last = last;
                        s.restarts += 1;
                        s.started = false;
                    });
                }
                Ended::Stopped => {
                    shared.update(i, |s| s.ready = false);
                    let grace = stop.borrow().unwrap_or(grace_default);
                    let code = terminate(&c, pid, &mut child, ip, &launch, grace).await;
                    let reason = if code == 0 { "Completed" } else { "Error" };
                    let last = finish(code, reason, String::new());
                    shared.update(i, |s| s.state = last);
                    return;
                }
            }
        }
    }

    /// Patches the pod's status whenever what it would say changes.
    async fn report(self: Arc<Self>, shared: Arc<PodShared>, ip: IpAddr, started_at: String) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns());
        let names: Vec<(String, String)> = self
            .containers()
            .iter()
            .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
            .collect();
        let mut sent = Value::Null;
        let mut transitions: HashMap<String, (String, String)> = HashMap::new();
        loop {
            let cs = shared
                .containers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let all_ready = cs.iter().all(|c| c.ready);
            let any_running = cs.iter().any(|c| c.state.get("running").is_some());
            let statuses: Vec<Value> = cs
                .iter()
                .zip(&names)
                .map(|(c, (name, image))| {
                    let mut v = json!({
                        "name": name, "image": image, "imageID": format!("test-kubelet://{image}"),
                        "containerID": format!("test-kubelet://{}/{name}", self.name()),
                        "ready": c.ready, "started": c.started, "restartCount": c.restarts,
                        "state": c.state,
                    });
                    if !c.last.is_null() {
                        v["lastState"] = c.last.clone();
                    }
                    v
                })
                .collect();
            let truth = |b: bool| if b { "True" } else { "False" };
            let conditions: Vec<Value> = [
                ("PodReadyToStartContainers", "True"),
                ("Initialized", "True"),
                ("ContainersReady", truth(all_ready)),
                ("Ready", truth(all_ready)),
                ("PodScheduled", "True"),
            ]
            .iter()
            .map(|(t, s)| {
                let entry = transitions
                    .entry(t.to_string())
                    .or_insert_with(|| (s.to_string(), now_rfc3339()));
                if entry.0 != *s {
                    *entry = (s.to_string(), now_rfc3339());
                }
                json!({"type": t, "status": s, "lastTransitionTime": entry.1})
            })
            .collect();
            let status = json!({"status": {
                "phase": if any_running || cs.iter().any(|c| c.restarts > 0) { "Running" } else { "Pending" },
                "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}],
                "hostIP": net::HOST_IP.to_string(), "hostIPs": [{"ip": net::HOST_IP.to_string()}],
                "startTime": started_at, "conditions": conditions,
                "containerStatuses": statuses, "qosClass": "Burstable",
            }});
            let mut status = status;
            if let Some(g) = self.pod.metadata.generation {
                // The generation of the spec this status is about (Kubernetes 1.33+).
                status["status"]["observedGeneration"] = json!(g);
            }
            if status["status"]["conditions"] != sent["status"]["conditions"] {
                note(format_args!(
                    "{}/{}: ready {all_ready} after {:?}",
                    self.ns(),
                    self.name(),
                    self.seen.elapsed()
                ));
            }
            if status != sent {
                match api
                    .patch_status(
                        &self.name(),
                        &PatchParams::default(),
                        &Patch::Merge(&status),
                    )
                    .await
                {
                    Ok(_) => sent = status,
                    Err(kube::Error::Api(e)) if e.code == 404 => return,
                    Err(_) => {}
                }
            }
            // Woken by a change; the timeout retries a failed patch.
            let _ = tokio::time::timeout(Duration::from_secs(1), shared.changed.notified()).await;
        }
    }
}

/// Waits `d`, or until the pod is being stopped (true then).
async fn wait_or_stop(stop: &mut watch::Receiver<Option<i64>>, d: Duration) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.wait_for(|s| s.is_some()) => true,
    };
    stopped || stop.borrow().is_some()
}

/// A process' exit code as the kubelet reports it (128 + the signal when killed by one).
fn exit_code(s: std::process::ExitStatus) -> i32 {
    s.code()
        .unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(9))
}

/// Stops a container as the kubelet does: its preStop hook, SIGTERM, the rest of the grace
/// period, SIGKILL. The exit code (128 + signal when killed by one).
async fn terminate(
    c: &Container,
    pid: u32,
    child: &mut tokio::process::Child,
    ip: IpAddr,
    launch: &container::Launch,
    grace: i64,
) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(grace.max(0) as u64);
    container::pre_stop(c, ip, launch, deadline).await;
    container::signal(pid, libc::SIGTERM);
    // The kubelet gives at least 2 s after SIGTERM, even with a shorter grace.
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(2));
    let status = match tokio::time::timeout(left, child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            container::signal(pid, libc::SIGKILL);
            child.wait().await.ok()
        }
    };
    status.map(exit_code).unwrap_or(137)
}

/// A probe's schedule: (initial delay, period, success threshold, failure threshold).
fn schedule(p: &k8s_openapi::api::core::v1::Probe) -> (Duration, Duration, u32, u32) {
    let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
    let n = |v: Option<i32>, d: i32| v.unwrap_or(d).max(1) as u32;
    (
        secs(p.initial_delay_seconds, 0),
        secs(p.period_seconds, 10).max(Duration::from_secs(1)),
        n(p.success_threshold, 1),
        n(p.failure_threshold, 3),
    )
}

/// A container's probes for one run: the startup probe until it passes (its failure
/// threshold reached kills the container), then liveness and readiness on their schedules.
async fn probe_loop(
    c: Container,
    ip: IpAddr,
    launch: container::Launch,
    shared: Arc<PodShared>,
    i: usize,
    run: u64,
    fail: mpsc::Sender<String>,
) {
    let ports = c.ports.clone().unwrap_or_default();
    let started = Instant::now();
    let current = |s: &ContainerState| s.run == run;
    if let Some(p) = &c.startup_probe {
        let (delay, period, _, failures) = schedule(p);
        tokio::time::sleep(delay).await;
        let mut failed = 0;
        loop {
            if container::probe(p, ip, &ports, &launch).await {
                break;
            }
            failed += 1;
            if failed >= failures {
                let _ = fail
                    .send(format!("Startup probe failed {failed} times"))
                    .await;
                return;
            }
            tokio::time::sleep(period).await;
        }
        shared.update(i, |s| {
            if current(s) {
                s.started = true;
            }
        });
    }
    let liveness = async {
        let Some(p) = &c.liveness_probe else {
            return std::future::pending::<()>().await;
        };
        let (delay, period, _, failures) = schedule(p);
        tokio::time::sleep(delay.saturating_sub(started.elapsed())).await;
        let mut failed = 0;
        loop {
            if container::probe(p, ip, &ports, &launch).await {
                failed = 0;
            } else {
                failed += 1;
                if failed >= failures {
                    let _ = fail
                        .send(format!("Liveness probe failed {failed} times"))
                        .await;
                    return std::future::pending::<()>().await;
                }
            }
            tokio::time::sleep(period).await;
        }
    };
    let readiness = async {
        let Some(p) = &c.readiness_probe else {
            shared.update(i, |s| {
                if current(s) {
                    s.ready = true;
                }
            });
            return std::future::pending::<()>().await;
        };
        let (delay, period, successes, failures) = schedule(p);
        // The kubelet's pod sync after its PLEG saw the container start runs the probe at
        // once, and so does the sync after the result changed while the container is not
        // ready; otherwise the probe runs every period.
        tokio::time::sleep(RELIST.max(delay.saturating_sub(started.elapsed()))).await;
        let (mut ok, mut bad) = (0, 0);
        let mut last = None;
        loop {
            let passed = container::probe(p, ip, &ports, &launch).await;
            if passed {
                ok += 1;
                bad = 0;
                if ok >= successes {
                    shared.update(i, |s| {
                        if current(s) && !s.ready {
                            s.ready = true;
                        }
                    });
                }
            } else {
                bad += 1;
                ok = 0;
                if bad >= failures {
                    shared.update(i, |s| {
                        if current(s) {
                            s.ready = false;
                        }
                    });
                }
            }
            let changed = last != Some(passed);
            last = Some(passed);
            let ready = shared.containers.lock().unwrap_or_else(|p| p.into_inner())[i].ready;
            // Not again at once: unchanged, or ready.
            if !changed || ready {
                tokio::time::sleep(period).await;
            }
        }
    };
    tokio::join!(liveness, readiness);
}

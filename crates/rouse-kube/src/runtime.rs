//! [`KubeRuntime`]: the [`Runtime`] seam as Deployments. A revision's instances are the pods of
//! its Deployment `{rev}-deployment`, built by [`crate::revision::deployment`] and applied
//! server-side; the autoscaler's decision is written through the Deployment's `scale`
//! subresource; instances are read from a pod informer (Ready condition, pod IP), and every
//! pod change is announced to the controller. The ready pods' queue-proxies are scraped over
//! the network for the autoscaler ([`crate::scrape`]). A config change that changes how
//! Deployments are built (config-deployment, say) applies each revision's Deployment again at
//! its next `ensure`, so existing revisions roll to it, as Knative's do.

use crate::lock;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use rouse_api::autoscaling::annotations::WINDOW;
use rouse_api::duration::parse_go_duration;
use rouse_api::meta::Resource;
use rouse_api::serving::{ContainerStatus, Revision};
use rouse_autoscaler::collector::SCRAPER_POD_NAME;
use rouse_runtime::{
    ImageState, InstanceInfo, InstanceState, Runtime, Scrape, Termination, WorkloadSpec,
};
use rouse_store::{Kind, Store};
use tokio::runtime::Handle;
use tokio::sync::broadcast;

use crate::apply::apply;
use crate::digest::{PullSecrets, Resolver, TagResolution};
use crate::registry::RegistryClient;
use crate::revision::{
    DeploymentConfig, QUEUE_AUTOSCALER_METRICS_PORT, QUEUE_CONTAINER, deployment, deployment_name,
};
use crate::scrape::{SCRAPE_TIMEOUT, Target, scrape_revision};

/// The label every revision pod carries.
pub const LABEL_REVISION: &str = "serving.knative.dev/revision";
/// The queue-proxy's serving port: where an instance's requests go.
pub const QUEUE_PORT: u16 = 8012;
/// config-autoscaler's default `stable-window`, for pods whose revision sets none.
const DEFAULT_STABLE_WINDOW: Duration = Duration::from_secs(60);

type RevisionKey = (String, String);
/// What a Deployment was applied with: the config generation and the user image's digest.
type Applied = (u64, Option<String>);

/// Revisions' instances as the pods of their Deployments.
pub struct KubeRuntime {
    client: kube::Client,
    handle: Handle,
    store: Arc<dyn Store>,
    /// Replaced when the ConfigMaps change, with a generation counting the changes.
    config: Mutex<(DeploymentConfig, u64)>,
    /// The config generation and image digest each revision's Deployment was last applied
    /// with.
    applied: Arc<Mutex<HashMap<RevisionKey, Applied>>>,
    /// Image tag → digest resolution.
    resolver: Arc<Resolver>,
    pods: Arc<Mutex<HashMap<RevisionKey, BTreeMap<String, Pod>>>>,
    /// The replicas last written per revision, so an unchanged decision writes nothing.
    scaled: Arc<Mutex<HashMap<RevisionKey, u32>>>,
    /// The last error writing each revision's Deployment.
    failures: Arc<Mutex<HashMap<RevisionKey, String>>>,
    /// The revisions whose last scrape failed.
    scrape_failures: Arc<Mutex<HashSet<RevisionKey>>>,
    /// One write at a time per revision, so an older decision never lands after a newer one.
    turns: Arc<Mutex<HashMap<RevisionKey, Arc<tokio::sync::Mutex<()>>>>>,
    events: broadcast::Sender<RevisionKey>,
}

impl KubeRuntime {
    /// A runtime on `client`, running its calls and pod informer on `handle`; revisions are
    /// read from `store` (the controller's). Registries are trusted by the system's CAs
    /// (`SSL_CERT_FILE` when set).
    pub fn start(
        client: kube::Client,
        handle: Handle,
        store: Arc<dyn Store>,
        config: DeploymentConfig,
    ) -> Arc<KubeRuntime> {
        let registry = RegistryClient::with_system_roots().map_err(|e| {
            tracing::warn!(error = %e, "image tags cannot be resolved to digests");
            e.to_string()
        });
        Self::start_with_registry(client, handle, store, config, registry)
    }

    /// [`KubeRuntime::start`] with the given registry client (or why there is none).
    pub fn start_with_registry(
        client: kube::Client,
        handle: Handle,
        store: Arc<dyn Store>,
        config: DeploymentConfig,
        registry: Result<RegistryClient, String>,
    ) -> Arc<KubeRuntime> {
        let (events, _) = broadcast::channel(1024);
        let resolver = Arc::new(Resolver::new(client.clone(), registry));
        let rt = Arc::new(KubeRuntime {
            client: client.clone(),
            handle: handle.clone(),
            store,
            config: Mutex::new((config, 0)),
            applied: Arc::default(),
            resolver,
            pods: Arc::default(),
            scaled: Arc::default(),
            failures: Arc::default(),
            scrape_failures: Arc::default(),
            turns: Arc::default(),
            events: events.clone(),
        });
        handle.spawn(inform_pods(client, rt.pods.clone(), events));
        rt
    }

    /// The settings Deployments are built with from now on (config-deployment, config-defaults
    /// and config-features changed); if they differ, each revision's Deployment is applied
    /// again at its next `ensure`.
    pub fn set_config(&self, config: DeploymentConfig) {
        let mut current = self.config.lock().unwrap_or_else(|p| p.into_inner());
        if current.0 != config {
            *current = (config, current.1 + 1);
        }
    }

    /// config-deployment's tag resolution settings, from now on.
    pub fn set_tag_resolution(&self, settings: TagResolution) {
        self.resolver.set_settings(settings);
    }

    /// The revision's ready pods as scrape targets; a pod is old once it has run for the
    /// revision's stable window (its `autoscaling.knative.dev/window`, else 60 s).
    fn scrape_targets(&self, key: &RevisionKey) -> Vec<Target> {
        let pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        let now = k8s_openapi::jiff::Timestamp::now();
        pods.get(key)
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(|p| {
                let inst = instance(p).filter(|i| i.state == InstanceState::Ready)?;
                let window = p
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(WINDOW))
                    .and_then(|w| parse_go_duration(w).ok())
                    .unwrap_or(DEFAULT_STABLE_WINDOW);
                let started = p.status.as_ref().and_then(|s| s.start_time.as_ref());
                let old = started
                    .is_some_and(|t| now.as_second() - t.0.as_second() >= window.as_secs() as i64);
                Some(Target {
                    pod: inst.id,
                    addr: SocketAddr::new(inst.endpoint.ip(), QUEUE_AUTOSCALER_METRICS_PORT as u16),
                    old,
                })
            })
            .collect()
    }

    fn scaled(&self) -> MutexGuard<'_, HashMap<RevisionKey, u32>> {
        self.scaled.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies the revision's Deployment (first time, or after a failure) and writes
    /// `desired` through the scale subresource.
    async fn converge(
        client: kube::Client,
        rev: Revision,
        config: DeploymentConfig,
        desired: u32,
        applied: bool,
    ) -> Result<(), String> {
        let ns = rev.metadata.namespace.clone();
        let name = deployment_name(&rev.metadata.name);
        let replicas = i32::try_from(desired).unwrap_or(i32::MAX);
        if !applied {
            apply(&client, &deployment(&rev, &config, replicas))
                .await
                .map_err(|e| e.to_string())?;
        }
        let api: Api<Deployment> = Api::namespaced(client, &ns);
        let scale = serde_json::json!({"spec": {"replicas": replicas}});
        api.patch_scale(&name, &PatchParams::default(), &Patch::Merge(&scale))
            .await
            .map_err(|e| format!("scale Deployment {ns}/{name}: {e}"))?;
        Ok(())
    }
}

/// Records `digest` for container `name` in the revision's status, unless one is there.
fn record_digest(rev: &mut Revision, name: &str, digest: String) {
    let statuses = &mut rev.status.container_statuses;
    match statuses.iter_mut().find(|s| s.name == name) {
        Some(s) if s.image_digest.is_empty() => s.image_digest = digest,
        Some(_) => {}
        None => statuses.push(ContainerStatus {
            name: name.to_string(),
            image_digest: digest,
        }),
    }
}

/// The revision's image pull Secrets and ServiceAccount, from the store.
fn pull_secrets(store: &dyn Store, namespace: &str, revision: &str) -> PullSecrets {
    let Some(rev) = store
        .get(Kind::Revision, namespace, revision)
        .ok()
        .and_then(|v| Revision::from_value(v).ok())
    else {
        return PullSecrets::default();
    };
    PullSecrets {
        secrets: rev
            .spec
            .image_pull_secrets
            .iter()
            .filter_map(|r| r.get("name")?.as_str())
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect(),
        service_account: rev.spec.service_account_name.clone(),
    }
}

fn instance(pod: &Pod) -> Option<InstanceInfo> {
    let status = pod.status.as_ref()?;
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let restarts = status
        .container_statuses
        .iter()
        .flatten()
        .map(|c| u32::try_from(c.restart_count).unwrap_or(0))
        .sum();
    let state = if pod.metadata.deletion_timestamp.is_some() {
        InstanceState::Terminating
    } else if ready {
        InstanceState::Ready
    } else {
        InstanceState::Starting
    };
    Some(InstanceInfo {
        id: pod.metadata.name.clone().unwrap_or_default(),
        endpoint: SocketAddr::new(ip, QUEUE_PORT),
        app_port: 8080,
        pid: None,
        state,
        restarts,
        last_termination: last_termination(status),
        log_path: PathBuf::new(),
        ever_ready: ready,
    })
}

/// Why the user's containers last stopped or cannot start, as the kubelet reports it: the
/// last termination (exit code and, with FallbackToLogsOnError, the log's tail) or a waiting
/// reason that means the container will not run as is (an image that cannot be pulled, a
/// container that cannot be created). The queue-proxy's own status is not the user's.
fn last_termination(status: &k8s_openapi::api::core::v1::PodStatus) -> Option<Termination> {
    const NOT_STARTING: [&str; 6] = [
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    ];
    let users = || {
        status
            .container_statuses
            .iter()
            .flatten()
            .filter(|c| c.name != QUEUE_CONTAINER)
    };
    let terminated = users().find_map(|c| {
        let t = c
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .or_else(|| c.last_state.as_ref()?.terminated.as_ref())?;
        Some(Termination {
            exit_code: Some(t.exit_code),
            signal: None,
            reason: t.reason.clone().unwrap_or_else(|| "Error".into()),
            message: t.message.clone().unwrap_or_default(),
        })
    });
    terminated.or_else(|| {
        users().find_map(|c| {
            let w = c.state.as_ref()?.waiting.as_ref()?;
            let reason = w.reason.clone()?;
            NOT_STARTING
                .contains(&reason.as_str())
                .then(|| Termination {
                    exit_code: None,
                    signal: None,
                    message: w.message.clone().unwrap_or_default(),
                    reason,
                })
        })
    })
}

impl Runtime for KubeRuntime {
    /// The kubelet resolves them from the Deployment's pod spec.
    fn resolves_env_sources(&self) -> bool {
        true
    }

    fn ensure(&self, spec: WorkloadSpec, desired: u32) {
        let key = (spec.namespace.clone(), spec.revision.clone());
        let (config, generation) = self
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // The digest the user container runs from: recorded in the status, or resolved here
        // and not yet seen in the status the spec was made from.
        let container = spec.container.as_ref();
        let digest = container
            .and_then(|c| c.digest.clone())
            .or_else(|| self.resolver.resolved(&key));
        let fingerprint = (generation, digest.clone());
        let current = lock(&self.applied).get(&key) == Some(&fingerprint);
        let applied = match self.scaled().get(&key) {
            Some(n) if *n == desired && current => return,
            Some(_) => current,
            None => false,
        };
        let mut rev = match self
            .store
            .get(Kind::Revision, &spec.namespace, &spec.revision)
        {
            Ok(v) => match Revision::from_value(v) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(revision = %spec.revision, error = %e, "revision does not decode");
                    return;
                }
            },
            Err(e) => {
                tracing::debug!(revision = %spec.revision, error = %e, "revision gone; not scaling");
                return;
            }
        };
        if let (Some(c), Some(d)) = (container, digest) {
            record_digest(&mut rev, &c.name, d);
        }
        self.scaled().insert(key.clone(), desired);
        lock(&self.applied).insert(key.clone(), fingerprint);
        let client = self.client.clone();
        let (scaled, events) = (self.scaled.clone(), self.events.clone());
        let applied_with = self.applied.clone();
        let failures = self.failures.clone();
        let turn = self
            .turns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        self.handle.spawn(async move {
            // Writes of one revision go one at a time, each with the newest decision (tasks
            // may start in any order).
            let _turn = turn.lock().await;
            let desired = scaled
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .copied()
                .unwrap_or(desired);
            let result = KubeRuntime::converge(client, rev, config, desired, applied).await;
            let failed = {
                let mut last = failures.lock().unwrap_or_else(|p| p.into_inner());
                match result {
                    // Logged once per distinct error, not on every retry.
                    Err(e) => {
                        if last.get(&key) != Some(&e) {
                            tracing::warn!(error = %e, "scaling a revision failed; retrying");
                            last.insert(key.clone(), e);
                        }
                        true
                    }
                    Ok(()) => {
                        last.remove(&key);
                        false
                    }
                }
            };
            if failed {
                // Forgotten, so the next ensure applies again; the event makes one happen.
                scaled
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
                lock(&applied_with).remove(&key);
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = events.send(key);
            }
        });
    }

    /// The image's digest, resolved against its registry once per revision in the background
    /// ([`crate::digest`]); the revision is notified when the resolution ends.
    fn image(&self, spec: &WorkloadSpec) -> ImageState {
        let Some(c) = &spec.container else {
            return ImageState::NotImage;
        };
        let key = (spec.namespace.clone(), spec.revision.clone());
        if let Some(d) = &c.digest {
            // Recorded in the status, which a restarted controller reads back.
            self.resolver.forget(&key);
            return ImageState::Resolved(d.clone());
        }
        let store = self.store.clone();
        let events = self.events.clone();
        let notify = key.clone();
        self.resolver.state(
            key,
            &c.image,
            || pull_secrets(store.as_ref(), &spec.namespace, &spec.revision),
            &self.handle,
            move || {
                let _ = events.send(notify);
            },
        )
    }

    fn instances(&self, namespace: &str, revision: &str) -> Vec<InstanceInfo> {
        let pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(Option<String>, InstanceInfo)> = pods
            .get(&(namespace.to_string(), revision.to_string()))
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(|p| {
                let created = p
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.to_string());
                instance(p).map(|i| (created, i))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.id.cmp(&b.1.id)));
        out.into_iter().map(|(_, i)| i).collect()
    }

    fn remove(&self, namespace: &str, revision: &str) {
        let key = (namespace.to_string(), revision.to_string());
        self.scaled().remove(&key);
        lock(&self.applied).remove(&key);
        self.resolver.forget(&key);
        self.scrape_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        self.turns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
        let name = deployment_name(revision);
        self.handle.spawn(async move {
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    tracing::warn!(deployment = %name, error = %e, "deleting a Deployment failed")
                }
            }
        });
    }

    /// The ready pods' queue-proxies, read over the network with Knative's sampling
    /// ([`crate::scrape`]): one report for the whole revision, or none when it has no ready
    /// pod or too few answered.
    fn scrape(&self, namespace: &str, revision: &str) -> Scrape {
        let key = (namespace.to_string(), revision.to_string());
        let targets = self.scrape_targets(&key);
        let failures = self.scrape_failures.clone();
        Box::pin(async move {
            let mut rng = fastrand::Rng::new();
            let result = scrape_revision(targets, SCRAPE_TIMEOUT, &mut rng).await;
            let mut failing = failures.lock().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(report) => {
                    if failing.remove(&key) {
                        tracing::info!(namespace = %key.0, revision = %key.1, "scraping the revision's pods works again");
                    }
                    report
                        .map(|r| (SCRAPER_POD_NAME.to_string(), r))
                        .into_iter()
                        .collect()
                }
                Err(e) => {
                    // A warning when scraping starts failing, not every second it goes on.
                    if failing.insert(key.clone()) {
                        tracing::warn!(namespace = %key.0, revision = %key.1, error = %e, "scraping the revision's pods failed; nothing recorded until it works");
                    } else {
                        tracing::debug!(namespace = %key.0, revision = %key.1, error = %e, "scraping the revision's pods failed");
                    }
                    Vec::new()
                }
            }
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<(String, String)> {
        self.events.subscribe()
    }

    /// The pods belong to the cluster: nothing to stop here.
    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}

/// Lists and watches the revision pods of every namespace into `pods`, announcing each
/// revision whose pods change; relists with backoff on any failure. Never ends.
async fn inform_pods(
    client: kube::Client,
    pods: Arc<Mutex<HashMap<RevisionKey, BTreeMap<String, Pod>>>>,
    events: broadcast::Sender<RevisionKey>,
) {
    let api: Api<Pod> = Api::all(client);
    let mut backoff = Duration::from_millis(200);
    let mut failing = false;
    let key_of = |p: &Pod| -> Option<(RevisionKey, String)> {
        let rev = p.metadata.labels.as_ref()?.get(LABEL_REVISION)?.clone();
        Some((
            (p.metadata.namespace.clone().unwrap_or_default(), rev),
            p.metadata.name.clone().unwrap_or_default(),
        ))
    };
    loop {
        let list = match api
            .list(&ListParams::default().labels(LABEL_REVISION))
            .await
        {
            Ok(l) => l,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot list pods; retrying with backoff");
                    failing = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        failing = false;
        backoff = Duration::from_millis(200);
        let rv = list.metadata.resource_version.clone().unwrap_or_default();
        let mut touched: Vec<RevisionKey> = Vec::new();
        {
            let mut map = pods.lock().unwrap_or_else(|p| p.into_inner());
            touched.extend(map.keys().cloned());
            map.clear();
            for p in list.items {
                if let Some((rk, name)) = key_of(&p) {
                    touched.push(rk.clone());
                    map.entry(rk).or_default().insert(name, p);
                }
            }
        }
        for k in touched {
            let _ = events.send(k);
        }
        let wp = WatchParams::default().labels(LABEL_REVISION);
        let mut stream = match api.watch(&wp, &rv).await {
            Ok(s) => s.boxed(),
            Err(_) => continue,
        };
        while let Some(ev) = stream.next().await {
            let (pod, deleted) = match ev {
                Ok(WatchEvent::Added(p) | WatchEvent::Modified(p)) => (p, false),
                Ok(WatchEvent::Deleted(p)) => (p, true),
                Ok(WatchEvent::Bookmark(_)) => continue,
                Ok(WatchEvent::Error(_)) | Err(_) => break,
            };
            let Some((rk, name)) = key_of(&pod) else {
                continue;
            };
            {
                let mut map = pods.lock().unwrap_or_else(|p| p.into_inner());
                let entry = map.entry(rk.clone()).or_default();
                if deleted {
                    entry.remove(&name);
                } else {
                    entry.insert(name, pod);
                }
            }
            let _ = events.send(rk);
        }
    }
}

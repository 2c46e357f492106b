//! Knative's ConfigMaps in `knative-serving`, read live: `rouse controller` lists and watches
//! them, parses each with the parsers local mode uses (`rouse_api::config`, plus
//! `config-deployment` here), and publishes the result, so a change takes effect without a
//! restart. A ConfigMap that does not parse keeps its last good data; the error is logged
//! once and recorded as a Warning Event on the ConfigMap.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Event, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use rouse_api::config::{CONFIGMAP_NAMES, Config, ConfigData, ConfigError, SharedConfig};
use tokio::sync::watch;

use crate::digest::TagResolution;
use crate::revision::{DeploymentConfig, QUEUE_RESOURCES, QueueResources};

/// `config-deployment`: the queue-proxy sidecar's image and the Deployments' settings.
pub const DEPLOYMENT_NAME: &str = "config-deployment";

/// The longest wait between tries while the API server is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// True for the ConfigMaps Rouse reads.
pub fn is_read(name: &str) -> bool {
    CONFIGMAP_NAMES.contains(&name) || name == DEPLOYMENT_NAME
}

/// Parses one ConfigMap Rouse reads, as the controller will.
pub fn parse_one(name: &str, data: &ConfigData) -> Result<(), ConfigError> {
    if name == DEPLOYMENT_NAME {
        return DeploymentSettings::from_data(data).map(|_| ());
    }
    Config::from_maps(&BTreeMap::from([(name.to_string(), data.clone())])).map(|_| ())
}

/// `config-deployment`'s keys Knative knows; Rouse acts on the image, the progress deadline,
/// the queue-proxy's resources and tag resolution.
const DEPLOYMENT_KEYS: &[&str] = &[
    "queue-sidecar-image",
    "progress-deadline",
    "queue-sidecar-cpu-request",
    "queue-sidecar-cpu-limit",
    "queue-sidecar-memory-request",
    "queue-sidecar-memory-limit",
    "queue-sidecar-ephemeral-storage-request",
    "queue-sidecar-ephemeral-storage-limit",
    "queue-sidecar-token-audiences",
    "queue-sidecar-rootca",
    "digest-resolution-timeout",
    "registries-skipping-tag-resolving",
    "concurrency-state-endpoint",
    "runtime-class-name",
    "pod-is-always-schedulable",
];

/// Parsed `config-deployment`: what the operator set (unset keys keep the controller's).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeploymentSettings {
    pub queue_image: Option<String>,
    /// `queue-sidecar-{resource}-request`, by resource name.
    pub queue_requests: BTreeMap<String, String>,
    /// `queue-sidecar-{resource}-limit`, by resource name.
    pub queue_limits: BTreeMap<String, String>,
    pub progress_deadline_seconds: Option<i32>,
    /// `registries-skipping-tag-resolving`: comma-separated registries.
    pub registries_skipping_tag_resolving: Option<BTreeSet<String>>,
    /// `digest-resolution-timeout`.
    pub digest_resolution_timeout: Option<Duration>,
}

impl DeploymentSettings {
    /// Parses `config-deployment`'s data (`_example` ignored, unknown keys refused).
    pub fn from_data(d: &ConfigData) -> Result<Self, ConfigError> {
        let err = |key: &str, reason: String| ConfigError::new(DEPLOYMENT_NAME, key, reason);
        for key in d.keys() {
            if key != rouse_api::config::EXAMPLE_KEY && !DEPLOYMENT_KEYS.contains(&key.as_str()) {
                return Err(err(key, "unknown key".into()));
            }
        }
        let get = |key: &str| d.get(key).map(|v| v.trim().to_string());
        let queue_image = get("queue-sidecar-image");
        if let Some(image) = &queue_image
            && (image.is_empty() || image.chars().any(char::is_whitespace))
        {
            return Err(err(
                "queue-sidecar-image",
                format!("{image:?} is not an image reference"),
            ));
        }
        let progress_deadline_seconds = match get("progress-deadline") {
            None => None,
            Some(raw) => {
                let d = rouse_api::duration::parse_go_duration(&raw)
                    .map_err(|e| err("progress-deadline", e))?;
                if d.is_zero() || d.subsec_nanos() != 0 {
                    return Err(err(
                        "progress-deadline",
                        format!("{raw:?} must be a positive whole number of seconds"),
                    ));
                }
                Some(
                    i32::try_from(d.as_secs())
                        .map_err(|_| err("progress-deadline", format!("{raw:?} is too long")))?,
                )
            }
        };
        let registries_skipping_tag_resolving = get("registries-skipping-tag-resolving").map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(String::from)
                .collect()
        });
        let digest_resolution_timeout = match get("digest-resolution-timeout") {
            None => None,
            Some(raw) => {
                let d = rouse_api::duration::parse_go_duration(&raw)
                    .map_err(|e| err("digest-resolution-timeout", e))?;
                if d.is_zero() {
                    return Err(err(
                        "digest-resolution-timeout",
                        format!("{raw:?} must be positive"),
                    ));
                }
                Some(d)
            }
        };
        let (mut queue_requests, mut queue_limits) = (BTreeMap::new(), BTreeMap::new());
        for name in QUEUE_RESOURCES {
            for (kind, map) in [
                ("request", &mut queue_requests),
                ("limit", &mut queue_limits),
            ] {
                let key = format!("queue-sidecar-{name}-{kind}");
                let Some(v) = get(&key).filter(|v| !v.is_empty()) else {
                    continue;
                };
                if rouse_controller::workload::parse_quantity(&v).is_none() {
                    return Err(err(&key, format!("{v:?} is not a quantity")));
                }
                map.insert(name.to_string(), v);
            }
        }
        Ok(Self {
            queue_image,
            queue_requests,
            queue_limits,
            progress_deadline_seconds,
            registries_skipping_tag_resolving,
            digest_resolution_timeout,
        })
    }

    /// Tag resolution's settings: what is set, over Knative's defaults.
    pub fn tag_resolution(&self) -> TagResolution {
        let d = TagResolution::default();
        TagResolution {
            skip: self
                .registries_skipping_tag_resolving
                .clone()
                .unwrap_or(d.skip),
            timeout: self.digest_resolution_timeout.unwrap_or(d.timeout),
        }
    }
}

/// `config-features` flag giving the queue-proxy Knative's default requests and limits.
const QUEUE_RESOURCE_DEFAULTS: &str = "queueproxy.resource-defaults";

/// The queue-proxy's resources: what config-deployment sets, over Knative's defaults when
/// `defaults` (the feature flag), over the controller's `base`.
fn queue_resources(
    settings: &DeploymentSettings,
    base: &QueueResources,
    defaults: bool,
) -> QueueResources {
    let mut r = QueueResources {
        requests: settings.queue_requests.clone(),
        limits: settings.queue_limits.clone(),
    };
    if defaults {
        r = r.with_knative_defaults();
    }
    for (name, v) in &base.requests {
        r.requests.entry(name.clone()).or_insert_with(|| v.clone());
    }
    for (name, v) in &base.limits {
        r.limits.entry(name.clone()).or_insert_with(|| v.clone());
    }
    r
}

/// The Deployment builder's settings from the live config over the controller's `base`.
pub fn deployment_config(
    cfg: &Config,
    settings: &DeploymentSettings,
    base: &DeploymentConfig,
) -> DeploymentConfig {
    use rouse_api::config::features::{Flag, MULTI_CONTAINER_PROBING};
    let d = &cfg.defaults;
    DeploymentConfig {
        queue_image: settings
            .queue_image
            .clone()
            .unwrap_or_else(|| base.queue_image.clone()),
        queue_resources: queue_resources(
            settings,
            &base.queue_resources,
            cfg.features.get(QUEUE_RESOURCE_DEFAULTS) == Flag::Enabled,
        ),
        progress_deadline_seconds: settings
            .progress_deadline_seconds
            .unwrap_or(base.progress_deadline_seconds),
        system_namespace: base.system_namespace.clone(),
        enable_service_links: d.enable_service_links.unwrap_or(false),
        autodetect_http2: cfg.features.get("autodetect-http2") == Flag::Enabled,
        multi_container_probing: cfg.features.get(MULTI_CONTAINER_PROBING) == Flag::Enabled,
        revision_timeout_seconds: d.revision_timeout_seconds,
        revision_response_start_timeout_seconds: d.revision_response_start_timeout_seconds,
        revision_idle_timeout_seconds: d.revision_idle_timeout_seconds,
        observability: cfg.observability.clone(),
    }
}

/// Every ConfigMap's last good data.
#[derive(Debug, Clone, Default)]
pub struct ConfigSet {
    good: BTreeMap<String, ConfigData>,
}

impl ConfigSet {
    /// Takes a ConfigMap's new data (`None`: deleted, back to the defaults) if it parses;
    /// otherwise keeps the last good data and returns why. `Ok(true)` when something changed.
    pub fn offer(&mut self, name: &str, data: Option<ConfigData>) -> Result<bool, ConfigError> {
        if !is_read(name) {
            return Ok(false);
        }
        match data {
            None => Ok(self.good.remove(name).is_some()),
            Some(data) => {
                parse_one(name, &data)?;
                Ok(self.good.insert(name.to_string(), data.clone()).as_ref() != Some(&data))
            }
        }
    }

    /// The names currently held.
    pub fn names(&self) -> Vec<String> {
        self.good.keys().cloned().collect()
    }

    /// The config the held ConfigMaps make.
    pub fn config(&self) -> Config {
        let maps: BTreeMap<String, ConfigData> = self
            .good
            .iter()
            .filter(|(name, _)| name.as_str() != DEPLOYMENT_NAME)
            .map(|(n, d)| (n.clone(), d.clone()))
            .collect();
        // Each map parsed on its own when offered; together they cannot fail.
        Config::from_maps(&maps).unwrap_or_default()
    }

    /// `config-deployment` as held.
    pub fn deployment(&self) -> DeploymentSettings {
        self.good
            .get(DEPLOYMENT_NAME)
            .and_then(|d| DeploymentSettings::from_data(d).ok())
            .unwrap_or_default()
    }
}

/// The live config a controller reads.
#[derive(Clone)]
pub struct LiveConfig {
    /// Read by the reconcilers and the webhook.
    pub config: SharedConfig,
    /// `config-deployment`, for the Deployment builder.
    pub deployment: watch::Receiver<DeploymentSettings>,
    /// True once the ConfigMaps were listed once.
    pub synced: watch::Receiver<bool>,
    /// Counts the configs published: changes when a ConfigMap change took effect.
    pub changes: watch::Receiver<u64>,
}

impl LiveConfig {
    /// Resolves once the ConfigMaps were listed once.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.clone();
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// Starts watching the ConfigMaps of `namespace` on `handle`, publishing into `config`; a
/// ConfigMap that does not parse is also reported as a Warning Event on it.
pub fn start(
    client: kube::Client,
    handle: &tokio::runtime::Handle,
    namespace: &str,
    config: SharedConfig,
) -> LiveConfig {
    start_with(client, handle, namespace, config, true)
}

/// [`start`] for a process that may only read the ConfigMaps (the activator): a ConfigMap
/// that does not parse is logged once, and the controller (watching the same ConfigMaps)
/// records the Event.
pub fn start_reading(
    client: kube::Client,
    handle: &tokio::runtime::Handle,
    namespace: &str,
    config: SharedConfig,
) -> LiveConfig {
    start_with(client, handle, namespace, config, false)
}

fn start_with(
    client: kube::Client,
    handle: &tokio::runtime::Handle,
    namespace: &str,
    config: SharedConfig,
    record_events: bool,
) -> LiveConfig {
    let (deployment_tx, deployment) = watch::channel(DeploymentSettings::default());
    let (synced_tx, synced) = watch::channel(false);
    let (changes_tx, changes) = watch::channel(0u64);
    let watcher = Watcher {
        api: Api::namespaced(client.clone(), namespace),
        events: record_events.then(|| Api::namespaced(client, namespace)),
        namespace: namespace.to_string(),
        set: ConfigSet::default(),
        reported: BTreeMap::new(),
        config: config.clone(),
        deployment: deployment_tx,
        changes: changes_tx,
    };
    handle.spawn(watcher.run(synced_tx));
    LiveConfig {
        config,
        deployment,
        synced,
        changes,
    }
}

struct Watcher {
    api: Api<ConfigMap>,
    /// Where invalid ConfigMaps are reported (none: logged only).
    events: Option<Api<Event>>,
    namespace: String,
    set: ConfigSet,
    /// The error last reported per ConfigMap, so each is reported once.
    reported: BTreeMap<String, String>,
    config: SharedConfig,
    deployment: watch::Sender<DeploymentSettings>,
    changes: watch::Sender<u64>,
}

impl Watcher {
    /// List, apply, follow the watch; on any failure back off and list again. Never ends.
    async fn run(mut self, synced: watch::Sender<bool>) {
        let mut backoff = Duration::from_millis(200);
        let mut failing = false;
        loop {
            let list = match self.api.list(&ListParams::default()).await {
                Ok(l) => l,
                Err(e) => {
                    if !failing {
                        tracing::warn!(namespace = %self.namespace, error = %e,
                            "cannot list the ConfigMaps; keeping the current config and retrying");
                        failing = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            failing = false;
            backoff = Duration::from_millis(200);
            let listed: Vec<String> = list
                .items
                .iter()
                .filter_map(|c| c.metadata.name.clone())
                .collect();
            let mut changed = false;
            for gone in self.set.names().into_iter().filter(|n| !listed.contains(n)) {
                changed |= self.set.offer(&gone, None).unwrap_or(false);
            }
            for cm in &list.items {
                changed |= self.take(cm).await;
            }
            if changed || !*synced.borrow() {
                self.publish();
            }
            synced.send_replace(true);
            let rv = list.metadata.resource_version.unwrap_or_default();
            let mut stream = match self.api.watch(&WatchParams::default(), &rv).await {
                Ok(s) => s.boxed(),
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            while let Some(ev) = stream.next().await {
                let changed = match ev {
                    Ok(WatchEvent::Added(cm) | WatchEvent::Modified(cm)) => self.take(&cm).await,
                    Ok(WatchEvent::Deleted(cm)) => {
                        let name = cm.metadata.name.unwrap_or_default();
                        self.set.offer(&name, None).unwrap_or(false)
                    }
                    Ok(WatchEvent::Bookmark(_)) => false,
                    Ok(WatchEvent::Error(_)) | Err(_) => break,
                };
                if changed {
                    self.publish();
                }
            }
        }
    }

    /// Offers one ConfigMap; reports it once if it does not parse.
    async fn take(&mut self, cm: &ConfigMap) -> bool {
        let name = cm.metadata.name.clone().unwrap_or_default();
        let data: ConfigData = cm.data.clone().unwrap_or_default().into_iter().collect();
        match self.set.offer(&name, Some(data)) {
            Ok(changed) => {
                if self.reported.remove(&name).is_some() {
                    tracing::info!(configmap = %name, "the ConfigMap parses again: applied");
                }
                changed
            }
            Err(e) => {
                let message = format!("invalid ConfigMap, keeping the last good config: {e}");
                if self.reported.get(&name) != Some(&message) {
                    tracing::error!(namespace = %self.namespace, configmap = %name, error = %e,
                        "invalid ConfigMap: keeping the last good config");
                    self.record_event(cm, &message).await;
                    self.reported.insert(name, message);
                }
                false
            }
        }
    }

    fn publish(&self) {
        let config = self.set.config();
        tracing::info!(configmaps = ?self.set.names(), "config applied");
        self.config.set(config);
        self.deployment.send_replace(self.set.deployment());
        self.changes.send_modify(|n| *n += 1);
    }

    /// A Warning Event on the ConfigMap (`kubectl describe configmap` shows it).
    async fn record_event(&self, cm: &ConfigMap, message: &str) {
        let Some(events) = &self.events else {
            return;
        };
        let name = cm.metadata.name.clone().unwrap_or_default();
        let now = SystemTime::now();
        let nanos = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{nanos:x}")),
                namespace: Some(self.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("ConfigMap".into()),
                name: Some(name),
                namespace: Some(self.namespace.clone()),
                uid: cm.metadata.uid.clone(),
                resource_version: cm.metadata.resource_version.clone(),
                ..Default::default()
            },
            reason: Some("InvalidConfig".into()),
            message: Some(message.to_string()),
            type_: Some("Warning".into()),
            count: Some(1),
            first_timestamp: Some(Time(jiff_now(now))),
            last_timestamp: Some(Time(jiff_now(now))),
            reporting_component: Some("rouse-controller".into()),
            source: Some(k8s_openapi::api::core::v1::EventSource {
                component: Some("rouse-controller".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        if let Err(e) = events.create(&PostParams::default(), &event).await {
            tracing::warn!(error = %e, "cannot record the Event for an invalid ConfigMap");
        }
    }
}

fn jiff_now(now: SystemTime) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::try_from(now).unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> ConfigData {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_bad_configmap_keeps_the_last_good_one() {
        let mut set = ConfigSet::default();
        assert!(
            set.offer(
                "config-defaults",
                Some(data(&[("revision-timeout-seconds", "120")]))
            )
            .unwrap()
        );
        assert_eq!(set.config().defaults.revision_timeout_seconds, 120);
        let err = set
            .offer(
                "config-defaults",
                Some(data(&[("revision-timeout-seconds", "soon")])),
            )
            .unwrap_err();
        assert_eq!(err.configmap, "config-defaults");
        assert_eq!(err.key, "revision-timeout-seconds");
        assert_eq!(set.config().defaults.revision_timeout_seconds, 120);
        // The same data again is no change; a deletion goes back to the defaults.
        assert!(
            !set.offer(
                "config-defaults",
                Some(data(&[("revision-timeout-seconds", "120")]))
            )
            .unwrap()
        );
        assert!(set.offer("config-defaults", None).unwrap());
        assert_eq!(set.config(), Config::default());
        // ConfigMaps Rouse does not read are ignored.
        assert!(
            !set.offer("kube-root-ca.crt", Some(data(&[("ca.crt", "x")])))
                .unwrap()
        );
    }

    #[test]
    fn config_deployment_parses_and_feeds_the_deployment_builder() {
        let mut set = ConfigSet::default();
        set.offer(
            DEPLOYMENT_NAME,
            Some(data(&[
                ("queue-sidecar-image", "registry.example/rouse:v2"),
                ("progress-deadline", "2m"),
                ("_example", "anything"),
            ])),
        )
        .unwrap();
        let base = DeploymentConfig::default();
        let d = deployment_config(&set.config(), &set.deployment(), &base);
        assert_eq!(d.queue_image, "registry.example/rouse:v2");
        assert_eq!(d.progress_deadline_seconds, 120);
        assert_eq!(d.queue_resources, base.queue_resources);
        for (key, value, want) in [
            ("progress-deadline", "0s", "progress-deadline"),
            (
                "queue-sidecar-memory-limit",
                "lots",
                "queue-sidecar-memory-limit",
            ),
            (
                "queue-sidecar-cpu-request",
                "-1",
                "queue-sidecar-cpu-request",
            ),
            ("progress-deadline", "1.5s", "progress-deadline"),
            ("queue-sidecar-image", "a b", "queue-sidecar-image"),
            ("queue-sidecar-imag", "x", "queue-sidecar-imag"),
            (
                "digest-resolution-timeout",
                "0s",
                "digest-resolution-timeout",
            ),
            (
                "digest-resolution-timeout",
                "soon",
                "digest-resolution-timeout",
            ),
        ] {
            let err = DeploymentSettings::from_data(&data(&[(key, value)])).unwrap_err();
            assert_eq!(
                (err.configmap.as_str(), err.key.as_str()),
                (DEPLOYMENT_NAME, want)
            );
        }
    }

    #[test]
    fn config_deployment_sets_tag_resolution() {
        let defaults = DeploymentSettings::default().tag_resolution();
        assert_eq!(defaults, TagResolution::default());
        assert_eq!(
            defaults.skip.iter().map(String::as_str).collect::<Vec<_>>(),
            ["dev.local", "kind.local", "ko.local"]
        );
        assert_eq!(defaults.timeout, Duration::from_secs(10));
        let set = DeploymentSettings::from_data(&data(&[
            (
                "registries-skipping-tag-resolving",
                " index.docker.io, ,registry.example:5000 ",
            ),
            ("digest-resolution-timeout", "1m30s"),
        ]))
        .unwrap()
        .tag_resolution();
        assert_eq!(
            set.skip.iter().map(String::as_str).collect::<Vec<_>>(),
            ["index.docker.io", "registry.example:5000"]
        );
        assert_eq!(set.timeout, Duration::from_secs(90));
        // An empty list resolves every registry.
        let none =
            DeploymentSettings::from_data(&data(&[("registries-skipping-tag-resolving", "")]))
                .unwrap()
                .tag_resolution();
        assert!(none.skip.is_empty());
    }

    #[test]
    fn config_observability_feeds_the_deployment_builder() {
        // The request log is in the Deployment (the sidecar's OBSERVABILITY_CONFIG), so
        // switching it changes the Deployment config and rolls the revisions' pods.
        let base = DeploymentConfig::default();
        let mut set = ConfigSet::default();
        let before = deployment_config(&set.config(), &set.deployment(), &base);
        assert!(!before.observability.enable_request_log);
        assert!(
            set.offer(
                rouse_api::config::observability::NAME,
                Some(data(&[
                    ("logging.enable-request-log", "true"),
                    ("logging.request-log-template", "{{.Request.Method}}"),
                ])),
            )
            .unwrap()
        );
        let on = deployment_config(&set.config(), &set.deployment(), &base);
        assert!(on.observability.enable_request_log);
        assert_ne!(on, before);
        // A template the sidecar cannot run is refused; the last good one stays.
        let err = set
            .offer(
                rouse_api::config::observability::NAME,
                Some(data(&[(
                    "logging.request-log-template",
                    "{{if .Request.Method}}x{{end}}",
                )])),
            )
            .unwrap_err();
        assert_eq!(err.key, "logging.request-log-template");
        assert_eq!(
            deployment_config(&set.config(), &set.deployment(), &base),
            on
        );
    }

    #[test]
    fn queue_resources_from_config_deployment_and_the_defaults_flag() {
        let mut set = ConfigSet::default();
        set.offer(
            DEPLOYMENT_NAME,
            Some(data(&[
                ("queue-sidecar-cpu-request", "50m"),
                ("queue-sidecar-memory-request", "64Mi"),
                ("queue-sidecar-memory-limit", "128Mi"),
            ])),
        )
        .unwrap();
        let base = DeploymentConfig::default();
        let d = deployment_config(&set.config(), &set.deployment(), &base);
        let map = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            d.queue_resources.requests,
            map(&[("cpu", "50m"), ("memory", "64Mi")])
        );
        assert_eq!(d.queue_resources.limits, map(&[("memory", "128Mi")]));
        // With the flag, Knative's defaults fill what is not set.
        set.offer(
            "config-features",
            Some(data(&[("queueproxy.resource-defaults", "Enabled")])),
        )
        .unwrap();
        let d = deployment_config(&set.config(), &set.deployment(), &base);
        assert_eq!(
            d.queue_resources.requests,
            map(&[
                ("cpu", "50m"),
                ("ephemeral-storage", "512Mi"),
                ("memory", "64Mi")
            ])
        );
        assert_eq!(
            d.queue_resources.limits,
            map(&[
                ("cpu", "1000m"),
                ("ephemeral-storage", "1024Mi"),
                ("memory", "128Mi")
            ])
        );
    }
}

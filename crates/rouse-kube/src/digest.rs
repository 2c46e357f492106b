//! Resolving each revision's image tag to a digest on Kubernetes, as Knative's controller
//! does: once per revision, off the reconcile thread, with the revision's image pull Secrets
//! and its ServiceAccount's, bounded by config-deployment's `digest-resolution-timeout`.
//! Images of the registries in `registries-skipping-tag-resolving` run by tag (an empty
//! `imageDigest`, as Knative records), and an image already pinned by digest is used as is.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Api;
use rouse_runtime::ImageState;
use tokio::time::Instant;

use crate::lock;
use crate::registry::{ImageRef, Keychain, RegistryClient};

/// Knative's reason for an image that cannot be resolved.
pub const REASON_IMAGE: &str = "ContainerMissing";
/// config-deployment `registries-skipping-tag-resolving`'s default.
pub const DEFAULT_SKIPPED: [&str; 3] = ["kind.local", "ko.local", "dev.local"];
/// config-deployment `digest-resolution-timeout`'s default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// A failed resolution is tried again after this long (on the next look).
pub const RETRY_FAILED_AFTER: Duration = Duration::from_secs(10);

/// config-deployment's settings for tag resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagResolution {
    /// Registries whose images are not resolved (`docker.io` stands for `index.docker.io`).
    pub skip: BTreeSet<String>,
    /// How long one resolution may take, credentials lookup included.
    pub timeout: Duration,
}

impl Default for TagResolution {
    fn default() -> Self {
        TagResolution {
            skip: DEFAULT_SKIPPED.iter().map(|s| s.to_string()).collect(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// What a resolution needs to know of the revision beyond its image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullSecrets {
    /// The revision's `imagePullSecrets` names.
    pub secrets: Vec<String>,
    /// Its `serviceAccountName` (`default` when unset).
    pub service_account: String,
}

type RevisionKey = (String, String);

struct Resolution {
    image: String,
    state: ImageState,
    at: Instant,
}

/// The revisions' resolutions, and the client doing them.
pub struct Resolver {
    client: kube::Client,
    /// The registry client, or why there is none (no CA roots).
    registry: Result<RegistryClient, String>,
    settings: Mutex<TagResolution>,
    results: Mutex<HashMap<RevisionKey, Resolution>>,
    retry_after: Duration,
}

/// Logs a resolution's end: a failure as a warning the first time it reads so (retries
/// that fail the same way are debug), a digest as info.
fn log_outcome(key: &RevisionKey, state: &ImageState, previous: Option<&ImageState>) {
    match state {
        ImageState::Failed { message, .. } if previous == Some(state) => {
            tracing::debug!(namespace = %key.0, revision = %key.1, "{message}")
        }
        ImageState::Failed { message, .. } => {
            tracing::warn!(namespace = %key.0, revision = %key.1, "{message}")
        }
        ImageState::Resolved(d) => {
            tracing::info!(namespace = %key.0, revision = %key.1, digest = %d, "image resolved")
        }
        _ => {}
    }
}

/// Knative's message: `Unable to fetch image "<image>": failed to resolve image to digest: …`.
pub fn failure(image: &str, why: &dyn std::fmt::Display) -> ImageState {
    ImageState::Failed {
        reason: REASON_IMAGE.to_string(),
        message: format!(
            "Unable to fetch image {image:?}: failed to resolve image to digest: {why}"
        ),
    }
}

impl Resolver {
    /// A resolver reading Secrets through `client` and asking registries with `registry`.
    pub fn new(client: kube::Client, registry: Result<RegistryClient, String>) -> Self {
        Resolver {
            client,
            registry,
            settings: Mutex::new(TagResolution::default()),
            results: Mutex::new(HashMap::new()),
            retry_after: RETRY_FAILED_AFTER,
        }
    }

    /// Tries a failed resolution again after `after` instead of [`RETRY_FAILED_AFTER`].
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = after;
        self
    }

    /// The settings used from now on (a resolution under way keeps its timeout).
    pub fn set_settings(&self, settings: TagResolution) {
        *lock(&self.settings) = settings;
    }

    /// The answer that needs no registry: an image pinned by digest (as is), one from a
    /// skipped registry (no digest: `Resolved("")`), or one that does not parse.
    pub fn immediate(&self, image: &str) -> Option<ImageState> {
        let parsed = match ImageRef::parse(image) {
            Ok(p) => p,
            Err(e) => return Some(failure(image, &e)),
        };
        if parsed.digest.is_some() {
            return Some(ImageState::Resolved(image.to_string()));
        }
        let settings = lock(&self.settings);
        let skipped = settings.skip.iter().any(|s| {
            s == &parsed.registry
                || (s == "docker.io" && parsed.registry == crate::registry::reference::DOCKER_HUB)
        });
        skipped.then(|| ImageState::Resolved(String::new()))
    }

    /// Where the revision's image stands; starts resolving it on `handle` the first time (or
    /// a while after a failure), calling `done` when finished.
    pub fn state(
        self: &Arc<Self>,
        key: (String, String),
        image: &str,
        pull: impl FnOnce() -> PullSecrets,
        handle: &tokio::runtime::Handle,
        done: impl FnOnce() + Send + 'static,
    ) -> ImageState {
        if let Some(s) = self.immediate(image) {
            return s;
        }
        let mut results = lock(&self.results);
        if let Some(r) = results.get(&key).filter(|r| r.image == image) {
            let retry =
                matches!(r.state, ImageState::Failed { .. }) && r.at.elapsed() >= self.retry_after;
            if !retry {
                return r.state.clone();
            }
        }
        // A retry keeps showing the last failure until it ends.
        let previous = results
            .get(&key)
            .filter(|r| r.image == image)
            .map(|r| r.state.clone());
        let showing = previous.clone().unwrap_or(ImageState::Resolving);
        results.insert(
            key.clone(),
            Resolution {
                image: image.to_string(),
                state: showing.clone(),
                at: Instant::now(),
            },
        );
        drop(results);
        let pull = pull();
        let timeout = lock(&self.settings).timeout;
        let this = self.clone();
        let image = image.to_string();
        handle.spawn(async move {
            let state = this.resolve_within(timeout, &key.0, &image, &pull).await;
            log_outcome(&key, &state, previous.as_ref());
            let mut results = lock(&this.results);
            // Stored only if the revision was not forgotten (or replaced) meanwhile.
            if let Some(r) = results.get_mut(&key).filter(|r| r.image == image) {
                r.state = state;
                r.at = Instant::now();
            }
            drop(results);
            done();
        });
        showing
    }

    /// One resolution, bounded by `timeout`, as the state it ends in.
    async fn resolve_within(
        &self,
        timeout: Duration,
        namespace: &str,
        image: &str,
        pull: &PullSecrets,
    ) -> ImageState {
        match tokio::time::timeout(timeout, self.resolve(namespace, image, pull)).await {
            Ok(Ok(digest)) => ImageState::Resolved(digest),
            Ok(Err(why)) => failure(image, &why),
            Err(_) => failure(
                image,
                &format!(
                    "timed out after {timeout:?} (config-deployment digest-resolution-timeout)"
                ),
            ),
        }
    }

    /// The digest resolved for the revision, if any.
    pub fn resolved(&self, key: &RevisionKey) -> Option<String> {
        match &lock(&self.results).get(key)?.state {
            ImageState::Resolved(d) if !d.is_empty() => Some(d.clone()),
            _ => None,
        }
    }

    /// Forgets a revision (removed, or its digest now recorded in its status).
    pub fn forget(&self, key: &RevisionKey) {
        lock(&self.results).remove(key);
    }

    /// Reads the credentials and asks the registry.
    async fn resolve(
        &self,
        namespace: &str,
        image: &str,
        pull: &PullSecrets,
    ) -> Result<String, String> {
        let registry = self.registry.as_ref().map_err(Clone::clone)?;
        let parsed = ImageRef::parse(image).map_err(|e| e.to_string())?;
        let keychain = self.keychain(namespace, pull).await?;
        registry
            .digest(&parsed, keychain.lookup(&parsed))
            .await
            .map_err(|e| e.to_string())
    }

    /// The revision's pull Secrets, then its ServiceAccount's, as the kubelet reads them: a
    /// Secret or ServiceAccount that does not exist is skipped (as Knative's keychain does).
    async fn keychain(&self, namespace: &str, pull: &PullSecrets) -> Result<Keychain, String> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let mut names = pull.secrets.clone();
        let account = if pull.service_account.is_empty() {
            "default"
        } else {
            pull.service_account.as_str()
        };
        match accounts.get_opt(account).await {
            Ok(Some(sa)) => names.extend(
                sa.image_pull_secrets
                    .into_iter()
                    .flatten()
                    .map(|r| r.name)
                    .filter(|n| !n.is_empty()),
            ),
            Ok(None) => {}
            Err(e) => return Err(format!("reading ServiceAccount {namespace}/{account}: {e}")),
        }
        let mut keychain = Keychain::default();
        for name in names {
            let secret = match secrets.get_opt(&name).await {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => return Err(format!("reading Secret {namespace}/{name}: {e}")),
            };
            let data: BTreeMap<String, Vec<u8>> = secret
                .data
                .into_iter()
                .flatten()
                .map(|(k, v)| (k, v.0))
                .collect();
            keychain
                .add_secret(&name, secret.type_.as_deref().unwrap_or(""), &data)
                .map_err(|e| e.to_string())?;
        }
        Ok(keychain)
    }
}

//! What the activator and the gateway processes learn about revisions: their pods, their
//! ServerlessService mode, the activators, the routes by host and the gateway's certificates.
//! Without a cluster a static file gives it ([`FileSource`]: the [`Topology`] itself, and
//! optionally Knative Ingresses and `kubernetes.io/tls` Secrets read as on a cluster); on a
//! cluster the API server does (Revisions, ServerlessServices, EndpointSlices, Ingresses,
//! Secrets: [`super::kube::KubeSource`]). Both sit behind [`EndpointsSource`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The data-plane view: every revision with its pods and mode, the activators, the routes,
/// the certificates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Topology {
    /// The activators' addresses (the public Services' endpoints in Proxy mode).
    #[serde(default)]
    pub activators: Vec<SocketAddr>,
    /// The revisions.
    #[serde(default)]
    pub revisions: Vec<RevisionEndpoints>,
    /// Hosts and the revisions their traffic goes to.
    #[serde(default)]
    pub routes: Vec<HostRoute>,
    /// The gateway's HTTPS certificates, by host.
    #[serde(default)]
    pub tls: Vec<TlsCertificate>,
}

/// A certificate the gateway serves over HTTPS for `hosts`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsCertificate {
    /// The host names it is chosen for (by SNI); `*.domain` for one label under `domain`.
    pub hosts: Vec<String>,
    /// The certificate chain, PEM, leaf first.
    pub certificate: String,
    /// Its private key, PEM.
    pub key: String,
}

impl std::fmt::Debug for TlsCertificate {
    // The key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCertificate")
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

/// The file's form: a [`Topology`], and Knative Ingresses with the `kubernetes.io/tls`
/// Secrets they name, made into routes and certificates as the gateway makes them on a
/// cluster (their revisions added to `revisions`, without pods, unless listed there).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileTopology {
    #[serde(default)]
    activators: Vec<SocketAddr>,
    #[serde(default)]
    revisions: Vec<RevisionEndpoints>,
    #[serde(default)]
    routes: Vec<HostRoute>,
    #[serde(default)]
    tls: Vec<TlsCertificate>,
    #[serde(default)]
    ingresses: Vec<rouse_api::ingress::Ingress>,
    #[serde(default)]
    secrets: Vec<serde_json::Value>,
}

impl FileTopology {
    fn into_topology(self) -> Topology {
        let secrets = super::kube::objects_by_key(self.secrets);
        let from_ingresses =
            super::kube::gateway_topology(&self.ingresses, &BTreeMap::new(), &secrets);
        let mut revisions = self.revisions;
        for r in from_ingresses.revisions {
            if !revisions
                .iter()
                .any(|k| k.namespace == r.namespace && k.name == r.name)
            {
                revisions.push(r);
            }
        }
        let mut routes = self.routes;
        routes.extend(from_ingresses.routes);
        let mut tls = self.tls;
        tls.extend(from_ingresses.tls);
        Topology {
            activators: self.activators,
            revisions,
            routes,
            tls,
        }
    }
}

/// One revision as the data plane sees it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevisionEndpoints {
    /// The revision's namespace.
    pub namespace: String,
    /// The revision.
    pub name: String,
    /// Its ServerlessService mode: `serve` (the gateway goes to the pods) or `proxy` (through
    /// the activators).
    pub mode: SksMode,
    /// Its pods' queue-proxy addresses (ready or starting: the activator probes them).
    #[serde(default)]
    pub pods: Vec<SocketAddr>,
    /// `containerConcurrency` (0 = unlimited).
    #[serde(default)]
    pub container_concurrency: u32,
    /// `timeoutSeconds` (absent: 300).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// `responseStartTimeoutSeconds` (absent: none).
    #[serde(default)]
    pub response_start_timeout_seconds: Option<u64>,
    /// The app speaks HTTP/2 cleartext.
    #[serde(default)]
    pub h2c: bool,
}

/// A ServerlessService mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SksMode {
    /// Straight to the pods.
    Serve,
    /// Through the activators.
    Proxy,
}

/// One host's traffic split.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostRoute {
    /// The host (port ignored, case-insensitive).
    pub host: String,
    /// The revisions and their percentages.
    pub targets: Vec<Target>,
    /// Headers set on the way to `targets` (an Ingress path's `appendHeaders`).
    #[serde(default)]
    pub append_headers: BTreeMap<String, String>,
    /// Tag-header-based routing: requests naming one of these tags in `Knative-Serving-Tag`
    /// go to its targets instead.
    #[serde(default)]
    pub tag_routes: Vec<TagRoute>,
    /// A mapped domain (a DomainMapping's Ingress path's `rewriteHost`): requests for `host`
    /// take this host's traffic and reach the app with it as their Host (the client's stays in
    /// `Forwarded`); `targets` and `tag_routes` are then empty.
    #[serde(default)]
    pub rewrite_host: Option<String>,
    /// Routing by path and headers (an Ingress's paths beyond the default and tag ones),
    /// tried with header matches first, then the longest path first; when given, `targets`
    /// and `tag_routes` are empty.
    #[serde(default)]
    pub paths: Vec<PathRoute>,
    /// Plain-HTTP requests get `301` to the same URL over HTTPS (`httpOption: Redirected`).
    #[serde(default)]
    pub redirect: bool,
    /// Only callers inside the cluster may reach it (a `ClusterLocal` Ingress rule's host):
    /// served on the gateway's cluster-local listener, unknown (404) on the external ones.
    #[serde(default)]
    pub cluster_local: bool,
}

/// One path of a host routed by path and headers.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathRoute {
    /// The path prefix (`""` or `"/"`: every path).
    #[serde(default)]
    pub path: String,
    /// Headers the request must carry with exactly these values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The revisions and their percentages.
    pub targets: Vec<Target>,
    /// Headers set on the way.
    #[serde(default)]
    pub append_headers: BTreeMap<String, String>,
}

/// A host's traffic for requests naming a tag in `Knative-Serving-Tag`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagRoute {
    /// The tag (matched exactly).
    pub tag: String,
    /// The revisions and their percentages.
    pub targets: Vec<Target>,
    /// Headers set on the way.
    #[serde(default)]
    pub append_headers: BTreeMap<String, String>,
}

/// A share of a host's traffic.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Target {
    /// The revision's namespace.
    pub namespace: String,
    /// The revision.
    pub revision: String,
    /// Its percentage.
    pub percent: u32,
    /// Headers set on the requests it takes (an Ingress split's own; served in `paths`).
    #[serde(default)]
    pub append_headers: BTreeMap<String, String>,
}

/// Why a description could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The Kubernetes API could not be reached or answered badly.
    #[error("Kubernetes API: {0}")]
    Kube(String),
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The file is not a valid description.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Field path and reason.
        reason: String,
    },
}

/// Where the processes learn the [`Topology`] from: each call gives the next version (the
/// first, the current one). A failed read keeps the previous version in force.
pub trait EndpointsSource: Send + 'static {
    /// Waits for the next version.
    fn next(&mut self) -> impl Future<Output = Result<Topology, SourceError>> + Send;
}

/// A JSON file, re-read when its content changes (polled: works on every file system and
/// with editors that replace the file).
pub struct FileSource {
    path: PathBuf,
    poll: Duration,
    last: Option<Vec<u8>>,
}

impl FileSource {
    /// Watches `path`, looking every `poll`.
    pub fn new(path: PathBuf, poll: Duration) -> Self {
        FileSource {
            path,
            poll,
            last: None,
        }
    }

    /// Reads and checks the file once.
    pub fn read(path: &std::path::Path) -> Result<Topology, SourceError> {
        let bytes = std::fs::read(path).map_err(|source| SourceError::Read {
            path: path.to_owned(),
            source,
        })?;
        parse(path, &bytes)
    }
}

fn parse(path: &std::path::Path, bytes: &[u8]) -> Result<Topology, SourceError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let file: FileTopology =
        serde_path_to_error::deserialize(de).map_err(|e| SourceError::Invalid {
            path: path.to_owned(),
            reason: format!("{}: {}", e.path(), e.inner()),
        })?;
    Ok(file.into_topology())
}

impl EndpointsSource for FileSource {
    async fn next(&mut self) -> Result<Topology, SourceError> {
        loop {
            if self.last.is_some() {
                tokio::time::sleep(self.poll).await;
            }
            let bytes = match tokio::fs::read(&self.path).await {
                Ok(b) => b,
                // Missing for a moment (replaced by rename): look again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.last.is_some() => {
                    continue;
                }
                Err(source) => {
                    self.last.get_or_insert_with(Vec::new);
                    return Err(SourceError::Read {
                        path: self.path.clone(),
                        source,
                    });
                }
            };
            if self.last.as_deref() == Some(bytes.as_slice()) {
                continue;
            }
            let parsed = parse(&self.path, &bytes);
            self.last = Some(bytes);
            return parsed;
        }
    }
}

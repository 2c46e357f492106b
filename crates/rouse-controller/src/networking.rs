//! The networking seam: what the controller programs into the data plane, and whether the data
//! plane serves it yet. Local mode's implementation (in the `rouse` crate, beside the local
//! runner) programs the in-process gateway and activator; Kubernetes mode's (`rouse-kube`)
//! programs Services, EndpointSlices and Ingresses behind the same trait.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use rouse_api::condition::ConditionStatus;
use rouse_api::networking::SksMode;

use crate::Key;

/// Where traffic goes: `(namespace, revision, percent)` each.
pub type Targets = Vec<(String, String, u32)>;

/// One host and where its traffic goes.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRoute {
    /// Lowercase host without port.
    pub host: String,
    /// `(namespace, revision, percent)`, summing to 100.
    pub targets: Targets,
    /// With no targets: the route exists but has no traffic yet, and this says why (its
    /// requests get 503 with it, not the 404 for unknown hosts).
    pub unavailable: Option<String>,
    /// Tag-header-based routing (`config-features` `tag-header-based-routing`): each tag and
    /// its `(namespace, revision, percent)` targets, for requests to this host that name the
    /// tag in `Knative-Serving-Tag`. Empty when the feature is off.
    pub tags: Vec<(String, Targets)>,
    /// A DomainMapping's domain: served as this host (its target's), with the Host header
    /// rewritten to it (Knative's `rewriteHost`); `targets` is then empty.
    pub rewrite_host: Option<String>,
}

/// How a revision is reached: its SKS mode, its instances and its request settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionTraffic {
    /// Serve: straight to ready instances. Proxy: through the activator.
    pub mode: SksMode,
    /// Queue-proxies of the ready instances (Serve mode's endpoints).
    pub ready: Vec<SocketAddr>,
    /// Queue-proxies of the instances ready or still starting (the activator probes them
    /// itself); one that failed readiness after passing it is left out until it passes again.
    pub backends: Vec<SocketAddr>,
    pub container_concurrency: u32,
    pub timeout: Duration,
    pub response_start_timeout: Option<Duration>,
    /// The app speaks HTTP/2 cleartext (its port is named `h2c`): every hop reaches it over h2c.
    pub h2c: bool,
    /// Request bodies up to this many bytes are received before they take a slot.
    pub request_body_buffer: u64,
}

/// Load the activator saw for a revision over the last second.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivatorLoad {
    pub namespace: String,
    pub revision: String,
    pub average_concurrency: f64,
    pub request_count: f64,
}

/// Whether the data plane serves a route or domain mapping as last programmed: its
/// `IngressReady` follows it (Knative's follows its Ingress's `Ready`, set by the ingress
/// implementation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngressState {
    /// Served as programmed.
    Ready,
    /// Not yet (`Unknown`) or refused (`False`), with the reason and message to show.
    NotReady {
        status: ConditionStatus,
        reason: String,
        message: String,
    },
}

impl IngressState {
    /// Knative's state for an Ingress not yet written or not yet looked at by its
    /// implementation.
    pub fn not_configured() -> IngressState {
        IngressState::NotReady {
            status: ConditionStatus::Unknown,
            reason: "IngressNotConfigured".into(),
            message: "Ingress has not yet been reconciled.".into(),
        }
    }
}

/// Programs routing and endpoints, and reports the activator's load.
pub trait Networking: Send + Sync + 'static {
    /// Replaces the whole routing table at once.
    fn set_routes(&self, routes: Vec<HostRoute>);
    /// Whether the part of the table last set for a Route or DomainMapping (`owner`) is
    /// served yet.
    fn ingress_state(&self, owner: &Key) -> IngressState;
    /// The Route or DomainMapping each time the answer of [`Networking::ingress_state`] for it
    /// may have changed on its own (its reconciler looks again); `None` when it never does.
    fn subscribe_ingresses(&self) -> Option<tokio::sync::broadcast::Receiver<Key>>;
    /// Which of a Route's cluster-local Services (Knative's placeholder Services, named after
    /// its traffic names: `{route}`, `{tag}-{route}`) are labelled
    /// `networking.knative.dev/visibility: cluster-local`, by name: those traffic names are
    /// served cluster-local only. None by default (local mode makes no such Services).
    fn cluster_local_services(&self, _namespace: &str, _route: &str) -> BTreeSet<String> {
        BTreeSet::new()
    }
    /// Replaces how a revision is reached, in one swap.
    fn set_revision(&self, namespace: &str, revision: &str, traffic: RevisionTraffic);
    /// Forgets a deleted revision; requests still routed to it are refused at once (503).
    fn remove_revision(&self, namespace: &str, revision: &str);
    /// True when requests for the revision now land on the activator (the scale-to-zero
    /// gate's confirmation, read from the same state the request path reads).
    fn serving_through_activator(&self, namespace: &str, revision: &str) -> bool;
    /// The activator's per-revision load since the last call.
    fn take_activator_stats(&self) -> Vec<ActivatorLoad>;
    /// Why the runtime refused to scale the revision up (`None`: it did not), so requests
    /// that have nowhere to go are answered at once instead of waiting.
    fn set_scale_refusal(&self, _namespace: &str, _revision: &str, _why: Option<String>) {}
}

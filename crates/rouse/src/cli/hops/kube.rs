//! [`KubeSource`]: the [`Topology`] of `rouse gateway` and `rouse activator` read from the
//! Kubernetes API, as Knative's ingress and activator read it.
//!
//! - The gateway follows the Ingresses of its class (all namespaces), the public Services'
//!   EndpointSlices and the `kubernetes.io/tls` Secrets: each rule's hosts route over its
//!   splits (revision = the split's Service), by path and headers when its paths ask for it,
//!   the Secrets the Ingresses' `spec.tls` name give the HTTPS certificates, and a revision's
//!   endpoints are its public slice's addresses — its pods in Serve mode, activators in Proxy mode, as the
//!   ServerlessService wrote them. Once a version is programmed it marks the Ingresses Ready.
//! - The activator follows Revisions (containerConcurrency, timeouts, protocol), their
//!   ServerlessServices (the revision's mode and private Service: a revision is known while
//!   its SKS exists) and the revisions' EndpointSlices: the private Service's (its pods, ready
//!   or not: it probes them itself) and the public one's (the activators in the revision's
//!   path, in Proxy mode). With a containerConcurrency it takes only its share of the pods
//!   (reference §4.4), so the activators together never send a pod more than its capacity.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use futures_util::future::select_all;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use rouse_api::ingress::{
    HttpIngressPath, HttpIngressRuleValue, Ingress, IngressBackendSplit, ROUSE_CLASS,
};
use rouse_api::serving::{IntOrString, Revision};
use rouse_kube::informer::{Informer, ObjectKey, Snapshot};
use rouse_kube::revision::{LABEL_SERVICE_TYPE, LABEL_SLICE_SERVICE};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::endpoints::{
    EndpointsSource, HostRoute, PathRoute, RevisionEndpoints, SksMode, SourceError, TagRoute,
    Target, TlsCertificate, Topology,
};

/// The endpoint port a Service port is reached on: `http` (HTTP/1.1) or `http2` (h2c).
const PORT_HTTP: &str = "http";
const PORT_H2C: &str = "http2";
/// The public Service port that carries h2c (Knative's).
const SERVICE_PORT_H2C: i64 = 81;

type Objects = BTreeMap<ObjectKey, Value>;

/// The gateway's Services by their cluster DNS names, as an Ingress's status names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadBalancers {
    /// The external one (`publicLoadBalancer`): hosts of `ExternalIP` rules.
    pub public: String,
    /// The cluster-local one (`privateLoadBalancer`): every host, inside the cluster only.
    pub private: String,
}

impl LoadBalancers {
    /// The install's Services ([`rouse_kube::install`]).
    pub fn installed() -> Self {
        use rouse_kube::install::{GATEWAY_LOCAL_SERVICE, GATEWAY_SERVICE, NAMESPACE};
        let dns = |name: &str| format!("{name}.{NAMESPACE}.svc.cluster.local");
        LoadBalancers {
            public: dns(GATEWAY_SERVICE),
            private: dns(GATEWAY_LOCAL_SERVICE),
        }
    }
}

/// What the process follows, and what it makes of it.
enum Role {
    Gateway {
        class: String,
        client: kube::Client,
        /// Where the gateway's Services are reached (the Ingresses' load balancers).
        load_balancers: LoadBalancers,
        /// Ingresses of the version last handed out, marked Ready once it was applied.
        unmarked: Vec<Ingress>,
    },
    Activator {
        /// This activator's own address, to find its place among the revision's activators.
        me: Option<IpAddr>,
        /// Pods the kubelet has reported ready at some point (see [`PodsSeen`]).
        seen: PodsSeen,
    },
}

/// The Kubernetes API as an [`EndpointsSource`]: the first version once every kind has been
/// listed, then a new one whenever what the process sees changes.
pub struct KubeSource {
    role: Role,
    /// Kept for their tasks; read through `receivers`.
    _informers: Vec<Informer>,
    receivers: Vec<watch::Receiver<Snapshot>>,
    last: Option<Topology>,
}

fn informers(list: Vec<Informer>) -> (Vec<Informer>, Vec<watch::Receiver<Snapshot>>) {
    let receivers = list.iter().map(Informer::subscribe).collect();
    (list, receivers)
}

fn slices_api(client: &kube::Client) -> Api<DynamicObject> {
    Api::all_with(client.clone(), &ApiResource::erase::<EndpointSlice>(&()))
}

impl KubeSource {
    /// The gateway's view: Ingresses of `class`, the public Services' EndpointSlices and the
    /// `kubernetes.io/tls` Secrets.
    /// `load_balancers` are written into the Ingresses' status.
    pub fn gateway(
        client: kube::Client,
        class: String,
        load_balancers: LoadBalancers,
    ) -> KubeSource {
        let ingress = rouse_kube::store::api_resource(&rouse_kube::crd::INGRESS);
        let (_informers, receivers) = informers(vec![
            Informer::start(
                Api::all_with(client.clone(), &ingress),
                "",
                "ingresses.networking.internal.knative.dev",
            ),
            Informer::start(
                slices_api(&client),
                &format!("{LABEL_SERVICE_TYPE}=Public"),
                "public endpointslices",
            ),
            // Only TLS Secrets: those the Ingresses' `spec.tls` entries may name.
            Informer::start_with_fields(
                Api::all_with(client.clone(), &ApiResource::erase::<Secret>(&())),
                "",
                "type=kubernetes.io/tls",
                "tls secrets",
            ),
        ]);
        KubeSource {
            role: Role::Gateway {
                class,
                client,
                load_balancers,
                unmarked: Vec::new(),
            },
            _informers,
            receivers,
            last: None,
        }
    }

    /// The activator's view: Revisions, their ServerlessServices and their Services'
    /// EndpointSlices. `me` is this activator's pod IP (`POD_IP`), if it runs in the cluster.
    pub fn activator(client: kube::Client, me: Option<IpAddr>) -> KubeSource {
        let revision = rouse_kube::store::api_resource(&rouse_kube::crd::REVISION);
        let sks = rouse_kube::store::api_resource(&rouse_kube::crd::SERVERLESS_SERVICE);
        let (_informers, receivers) = informers(vec![
            Informer::start(
                Api::all_with(client.clone(), &revision),
                "",
                "revisions.serving.knative.dev",
            ),
            Informer::start(
                Api::all_with(client.clone(), &sks),
                "",
                "serverlessservices.networking.internal.knative.dev",
            ),
            Informer::start(
                slices_api(&client),
                LABEL_SERVICE_TYPE,
                "revision endpointslices",
            ),
        ]);
        KubeSource {
            role: Role::Activator {
                me,
                seen: PodsSeen::default(),
            },
            _informers,
            receivers,
            last: None,
        }
    }

    fn build(&mut self) -> Topology {
        let sets: Vec<Snapshot> = self.receivers.iter().map(|r| r.borrow().clone()).collect();
        match &mut self.role {
            Role::Gateway {
                class, unmarked, ..
            } => {
                let ingresses = decode_ingresses(&sets[0].objects, class);
                let secrets = &sets[2].objects;
                let t = gateway_topology(&ingresses, &sets[1].objects, secrets);
                // As Knative's ingresses: not Ready while a certificate it names is missing
                // (its hosts have no HTTPS yet); marked once the Secret comes.
                *unmarked = ingresses
                    .into_iter()
                    .filter(|i| !is_marked(i) && has_certificates(i, secrets))
                    .collect();
                t
            }
            Role::Activator { me, seen } => activator_topology(
                &sets[0].objects,
                &sets[1].objects,
                &sets[2].objects,
                *me,
                seen,
            ),
        }
    }

    /// The version handed out last was applied by the caller (it asks for the next one only
    /// then): its Ingresses are programmed, so their status says so.
    fn mark_applied(&mut self) {
        if let Role::Gateway {
            client,
            load_balancers,
            unmarked,
            ..
        } = &mut self.role
        {
            for ing in std::mem::take(unmarked) {
                let (client, lbs) = (client.clone(), load_balancers.clone());
                tokio::spawn(async move { mark_ready(&client, &ing, &lbs).await });
            }
        }
    }
}

impl EndpointsSource for KubeSource {
    async fn next(&mut self) -> Result<Topology, SourceError> {
        self.mark_applied();
        if self.last.is_none() {
            // Nothing is handed out before every kind was listed once: an empty view would
            // route nothing.
            for rx in &mut self.receivers {
                rx.wait_for(|s| s.synced)
                    .await
                    .map_err(|_| SourceError::Kube("an informer stopped".into()))?;
            }
        } else {
            loop {
                let changed = self.receivers.iter_mut().map(|r| Box::pin(r.changed()));
                let (res, _, _) = select_all(changed).await;
                res.map_err(|_| SourceError::Kube("an informer stopped".into()))?;
                // Mark everything seen, so one change is not reported twice.
                for rx in &mut self.receivers {
                    rx.borrow_and_update();
                }
                let t = self.build();
                if self.last.as_ref() != Some(&t) {
                    break;
                }
                self.mark_applied();
            }
        }
        let t = self.build();
        self.last = Some(t.clone());
        Ok(t)
    }
}

/// The Ingresses of `class`, in namespace/name order. The class is read before decoding, so
/// other implementations' Ingresses (whatever fields they carry) are never decoded; one of
/// ours that does not decode is skipped and logged.
fn decode_ingresses(objects: &Objects, class: &str) -> Vec<Ingress> {
    objects
        .values()
        .filter(|v| {
            let annotated = &v["metadata"]["annotations"][rouse_api::ingress::ANNOTATION_CLASS];
            annotated.as_str().map_or(class == ROUSE_CLASS, |c| c == class)
                && v["metadata"]["deletionTimestamp"].is_null()
        })
        .filter_map(|v| match serde_json::from_value::<Ingress>(v.clone()) {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::warn!(name = %v["metadata"]["name"], error = %e, "an Ingress does not decode; ignored");
                None
            }
        })
        .collect()
}

/// Objects (JSON) keyed by their namespace and name, as an informer holds them.
pub(super) fn objects_by_key(values: impl IntoIterator<Item = Value>) -> Objects {
    values
        .into_iter()
        .map(|v| {
            let key = (
                v["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                v["metadata"]["name"].as_str().unwrap_or("").to_string(),
            );
            (key, v)
        })
        .collect()
}

/// One endpoint of an EndpointSlice: its address, readiness and ports by name.
struct SliceEndpoint {
    ip: IpAddr,
    ready: bool,
    ports: HashMap<String, u16>,
}

/// The endpoints of the slices of Service `(namespace, service)`.
fn slice_endpoints(slices: &Objects) -> HashMap<(String, String), Vec<SliceEndpoint>> {
    let mut out: HashMap<(String, String), Vec<SliceEndpoint>> = HashMap::new();
    for v in slices.values() {
        let Ok(slice) = serde_json::from_value::<EndpointSlice>(v.clone()) else {
            continue;
        };
        let ns = slice.metadata.namespace.clone().unwrap_or_default();
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_SLICE_SERVICE))
            .cloned()
        else {
            continue;
        };
        let ports: HashMap<String, u16> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.port?).ok()?)))
            .collect();
        let list = out.entry((ns, service)).or_default();
        for ep in &slice.endpoints {
            let conditions = ep.conditions.as_ref();
            if conditions.and_then(|c| c.terminating) == Some(true) {
                continue;
            }
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            for a in &ep.addresses {
                if let Ok(ip) = a.parse::<IpAddr>() {
                    list.push(SliceEndpoint {
                        ip,
                        ready,
                        ports: ports.clone(),
                    });
                }
            }
        }
    }
    out
}

/// The addresses of `eps` on the port named `port` (ready ones only, if `ready_only`),
/// sorted.
fn addresses(eps: Option<&Vec<SliceEndpoint>>, port: &str, ready_only: bool) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = eps
        .into_iter()
        .flatten()
        .filter(|e| e.ready || !ready_only)
        .filter_map(|e| Some(SocketAddr::new(e.ip, *e.ports.get(port)?)))
        .collect();
    // Knative orders backends by their address text; so does every activator here.
    out.sort_by_key(ToString::to_string);
    out.dedup();
    out
}

/// The tag a path matches when its only header match is `Knative-Serving-Tag` (what Knative's
/// Routes write for tag-header-based routing).
fn tag_match(headers: &BTreeMap<String, rouse_api::ingress::HeaderMatch>) -> Option<String> {
    match headers.iter().next() {
        Some((name, m))
            if headers.len() == 1 && name.eq_ignore_ascii_case(rouse_kube::route::HEADER_TAG) =>
        {
            Some(m.exact.clone())
        }
        _ => None,
    }
}

fn is_h2c_port(port: &IntOrString) -> bool {
    match port {
        IntOrString::Int(n) => *n == SERVICE_PORT_H2C,
        IntOrString::String(s) => s == PORT_H2C || s == "h2c",
    }
}

/// Whether `host` is one of the cluster-local forms a Route's `ClusterLocal` rule names:
/// `{name}.{ns}`, or `{name}.{ns}.svc` with or without the cluster domain after it.
fn is_cluster_local_host(host: &str) -> bool {
    let labels: Vec<&str> = host.trim_end_matches('.').split('.').collect();
    labels.len() == 2 || (labels.len() >= 3 && labels[2].eq_ignore_ascii_case("svc"))
}

/// Whether every path of a rule fits the Host-only form: the whole path space, no header
/// match but `Knative-Serving-Tag`, a host rewrite only on the plain path, and no split
/// headers but those the gateway sets itself.
fn is_host_only(paths: &[HttpIngressPath]) -> bool {
    paths.iter().all(|p| {
        matches!(p.path.as_str(), "" | "/")
            && (p.headers.is_empty()
                || (p.rewrite_host.is_empty() && tag_match(&p.headers).is_some()))
            && (!p.rewrite_host.is_empty() || p.splits.iter().all(|s| split_headers(s).is_empty()))
    })
}

/// A split's `appendHeaders` but the revision and namespace ones (Knative's Routes write
/// them; the gateway names the revision itself on every request it forwards).
fn split_headers(split: &IngressBackendSplit) -> BTreeMap<String, String> {
    split
        .append_headers
        .iter()
        .filter(|(name, _)| {
            !name.eq_ignore_ascii_case(rouse_kube::route::HEADER_REVISION)
                && !name.eq_ignore_ascii_case(rouse_kube::route::HEADER_NAMESPACE)
        })
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

/// The revisions a path splits over, noting each in `revisions` with its public endpoints.
fn path_targets(
    path: &HttpIngressPath,
    ns: &str,
    endpoints: &HashMap<(String, String), Vec<SliceEndpoint>>,
    revisions: &mut BTreeMap<(String, String), RevisionEndpoints>,
) -> Vec<Target> {
    let mut targets = Vec::new();
    for split in &path.splits {
        let split_ns = if split.service_namespace.is_empty() {
            ns.to_string()
        } else {
            split.service_namespace.clone()
        };
        let h2c = is_h2c_port(&split.service_port);
        let key = (split_ns.clone(), split.service_name.clone());
        revisions.entry(key.clone()).or_insert_with(|| {
            let port = if h2c { PORT_H2C } else { PORT_HTTP };
            RevisionEndpoints {
                namespace: key.0.clone(),
                name: key.1.clone(),
                mode: SksMode::Serve,
                pods: addresses(endpoints.get(&key), port, true),
                container_concurrency: 0,
                timeout_seconds: None,
                response_start_timeout_seconds: None,
                h2c,
            }
        });
        targets.push(Target {
            namespace: split_ns,
            revision: split.service_name.clone(),
            percent: u32::try_from(split.percent.clamp(0, 100)).unwrap_or(0),
            append_headers: split_headers(split),
        });
    }
    targets
}

/// A rule's routing in the Host-only form (its default path, tag paths, a host rewrite) or,
/// when it has other paths or header matches, as path rules.
struct RuleRouting {
    targets: Vec<Target>,
    append_headers: BTreeMap<String, String>,
    tag_routes: Vec<TagRoute>,
    rewrite: Option<String>,
    paths: Vec<PathRoute>,
}

fn rule_routing(
    ing: &Ingress,
    http: &HttpIngressRuleValue,
    endpoints: &HashMap<(String, String), Vec<SliceEndpoint>>,
    revisions: &mut BTreeMap<(String, String), RevisionEndpoints>,
) -> RuleRouting {
    let ns = &ing.metadata.namespace;
    let mut out = RuleRouting {
        targets: Vec::new(),
        append_headers: BTreeMap::new(),
        tag_routes: Vec::new(),
        rewrite: None,
        paths: Vec::new(),
    };
    if !is_host_only(&http.paths) {
        for path in &http.paths {
            if !path.rewrite_host.is_empty() {
                tracing::debug!(ingress = %ing.metadata.name, path = %path.path, "a rewriteHost path among path rules is not served; skipped");
                continue;
            }
            out.paths.push(PathRoute {
                path: path.path.clone(),
                headers: path
                    .headers
                    .iter()
                    .map(|(name, m)| (name.clone(), m.exact.clone()))
                    .collect(),
                targets: path_targets(path, ns, endpoints, revisions),
                append_headers: path.append_headers.clone(),
            });
        }
        return out;
    }
    let mut default: Option<(Vec<Target>, BTreeMap<String, String>)> = None;
    for path in &http.paths {
        if !path.rewrite_host.is_empty() {
            // A DomainMapping's path: its split names the target's own Service, not a
            // revision; the gateway serves the domain as the target host, which the
            // target Route's Ingress routes (its cluster-local rule).
            if default.is_none() {
                out.rewrite = Some(path.rewrite_host.clone());
                // Knative appends `K-Original-Host` on the split.
                let mut headers = path.append_headers.clone();
                for split in &path.splits {
                    headers.extend(split.append_headers.clone());
                }
                default = Some((Vec::new(), headers));
            }
            continue;
        }
        let targets = path_targets(path, ns, endpoints, revisions);
        if path.headers.is_empty() {
            default.get_or_insert((targets, path.append_headers.clone()));
        } else if let Some(tag) = tag_match(&path.headers) {
            out.tag_routes.push(TagRoute {
                tag,
                targets,
                append_headers: path.append_headers.clone(),
            });
        }
    }
    (out.targets, out.append_headers) = default.unwrap_or_default();
    out
}

/// The gateway's [`Topology`]: hosts from the Ingresses' rules (the first Ingress naming a
/// host wins; a `ClusterLocal` rule answers only cluster-local host names), revisions reached
/// on their public Services' endpoints, certificates from the `kubernetes.io/tls` Secrets
/// (`secrets`) the Ingresses' `spec.tls` entries name.
pub fn gateway_topology(ingresses: &[Ingress], slices: &Objects, secrets: &Objects) -> Topology {
    let endpoints = slice_endpoints(slices);
    let mut revisions: BTreeMap<(String, String), RevisionEndpoints> = BTreeMap::new();
    let mut routes = Vec::new();
    let mut hosts_seen = HashSet::new();
    let mut tls = Vec::new();
    for ing in ingresses {
        tls.extend(ingress_certificates(ing, secrets));
        for rule in &ing.spec.rules {
            let Some(http) = &rule.http else { continue };
            let cluster_local = rule.visibility == "ClusterLocal";
            // Knative's ingresses redirect the external rules only.
            let redirect = !cluster_local && ing.spec.http_option == "Redirected";
            let r = rule_routing(ing, http, &endpoints, &mut revisions);
            for host in &rule.hosts {
                if cluster_local && !is_cluster_local_host(host) {
                    tracing::debug!(ingress = %ing.metadata.name, %host, "a ClusterLocal rule's host that is no cluster-local name; not served");
                    continue;
                }
                if hosts_seen.insert(rouse_gateway::normalize_host(host)) {
                    routes.push(HostRoute {
                        host: host.clone(),
                        targets: r.targets.clone(),
                        append_headers: r.append_headers.clone(),
                        tag_routes: r.tag_routes.clone(),
                        rewrite_host: r.rewrite.clone(),
                        paths: r.paths.clone(),
                        redirect,
                        cluster_local,
                    });
                }
            }
        }
    }
    Topology {
        activators: Vec::new(),
        revisions: revisions.into_values().collect(),
        routes,
        tls,
    }
}

/// Whether every certificate the Ingress's `spec.tls` names is there.
fn has_certificates(ing: &Ingress, secrets: &Objects) -> bool {
    ingress_certificates(ing, secrets).len() == ing.spec.tls.len()
}

/// The certificates an Ingress's `spec.tls` entries name: each Secret's `tls.crt` and
/// `tls.key` (the Secret in `secretNamespace`, else the Ingress's namespace). One missing or
/// incomplete is skipped and logged (its hosts get no HTTPS until it appears).
fn ingress_certificates(ing: &Ingress, secrets: &Objects) -> Vec<TlsCertificate> {
    use base64::Engine as _;
    let mut out = Vec::new();
    for entry in &ing.spec.tls {
        let ns = if entry.secret_namespace.is_empty() {
            &ing.metadata.namespace
        } else {
            &entry.secret_namespace
        };
        let Some(secret) = secrets.get(&(ns.clone(), entry.secret_name.clone())) else {
            tracing::debug!(ingress = %ing.metadata.name, secret = %entry.secret_name, namespace = %ns, "the TLS Secret is not there (yet)");
            continue;
        };
        let field = |key: &str| -> Option<String> {
            let b64 = secret["data"][key].as_str()?;
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            String::from_utf8(bytes).ok()
        };
        let (Some(certificate), Some(key)) = (field("tls.crt"), field("tls.key")) else {
            tracing::warn!(ingress = %ing.metadata.name, secret = %entry.secret_name, namespace = %ns, "the TLS Secret lacks tls.crt or tls.key; its hosts get no certificate");
            continue;
        };
        out.push(TlsCertificate {
            hosts: entry.hosts.clone(),
            certificate,
            key,
        });
    }
    out
}

/// The pod addresses the kubelet has reported ready at least once. A private endpoint that
/// is not ready is one the activator probes itself before sending to it (a pod still starting,
/// which the activator may use before the kubelet's next probe) — unless the kubelet already
/// said it was ready: then not ready means its readiness probe failed since, and it gets no
/// new request until the kubelet says it is ready again, as Knative's activator does.
#[derive(Debug, Default)]
pub struct PodsSeen(HashSet<IpAddr>);

impl PodsSeen {
    /// The private endpoints to send to on `port`, sorted; remembers the ready ones.
    fn pods(&mut self, eps: Option<&Vec<SliceEndpoint>>, port: &str) -> Vec<SocketAddr> {
        for e in eps.into_iter().flatten().filter(|e| e.ready) {
            self.0.insert(e.ip);
        }
        let usable: Vec<SliceEndpoint> = eps
            .into_iter()
            .flatten()
            .filter(|e| e.ready || !self.0.contains(&e.ip))
            .map(|e| SliceEndpoint {
                ip: e.ip,
                ready: e.ready,
                ports: e.ports.clone(),
            })
            .collect();
        addresses(Some(&usable), port, false)
    }

    /// Forgets pods no slice names any more.
    fn keep_only(&mut self, endpoints: &HashMap<(String, String), Vec<SliceEndpoint>>) {
        let present: HashSet<IpAddr> = endpoints.values().flatten().map(|e| e.ip).collect();
        self.0.retain(|ip| present.contains(ip));
    }
}

/// What the activator takes from a ServerlessService.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SksView {
    mode: SksMode,
    /// The public Service (`status.serviceName`; the SKS's name until it is set).
    public_service: String,
    /// The private Service (`status.privateServiceName`; `{revision}-private` until set).
    private_service: String,
}

/// The ServerlessServices by the revision they belong to (the `serving.knative.dev/revision`
/// label, else a Revision owner, else the SKS's own name, which Knative gives it). Read
/// field by field: another implementation's SKS may carry fields Rouse's types refuse.
fn serverless_services(objects: &Objects) -> HashMap<(String, String), SksView> {
    let mut out = HashMap::new();
    for v in objects.values() {
        let meta = &v["metadata"];
        let (Some(ns), Some(name)) = (meta["namespace"].as_str(), meta["name"].as_str()) else {
            continue;
        };
        let owner = meta["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|o| o["kind"] == "Revision")
            .and_then(|o| o["name"].as_str());
        let revision = meta["labels"][rouse_kube::revision::LABEL_REVISION]
            .as_str()
            .or(owner)
            .unwrap_or(name);
        let mode = match v["spec"]["mode"].as_str() {
            Some("Proxy") => SksMode::Proxy,
            _ => SksMode::Serve,
        };
        let status_name = |field: &str| {
            v["status"][field]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        out.insert(
            (ns.to_string(), revision.to_string()),
            SksView {
                mode,
                public_service: status_name("serviceName").unwrap_or_else(|| name.to_string()),
                private_service: status_name("privateServiceName")
                    .unwrap_or_else(|| rouse_kube::revision::private_service_name(revision)),
            },
        );
    }
    out
}

/// The activator's [`Topology`]: every revision that has a ServerlessService, with its
/// parameters, its SKS mode and the pods this activator sends to. A revision without one
/// (not yet made, or deleted with its SKS) is not known: nothing routes to it here.
pub fn activator_topology(
    revisions: &Objects,
    sks: &Objects,
    slices: &Objects,
    me: Option<IpAddr>,
    seen: &mut PodsSeen,
) -> Topology {
    let endpoints = slice_endpoints(slices);
    let sks = serverless_services(sks);
    seen.keep_only(&endpoints);
    let mut out = Vec::new();
    for v in revisions.values() {
        let Ok(rev) = serde_json::from_value::<Revision>(v.clone()) else {
            tracing::warn!(name = %v["metadata"]["name"], "a Revision does not decode; ignored");
            continue;
        };
        let (ns, name) = (&rev.metadata.namespace, &rev.metadata.name);
        let Some(view) = sks.get(&(ns.clone(), name.clone())) else {
            tracing::debug!(namespace = %ns, revision = %name, "no ServerlessService (yet); not served");
            continue;
        };
        let h2c = rev.spec.is_h2c();
        let port = if h2c { PORT_H2C } else { PORT_HTTP };
        let pods = seen.pods(
            endpoints.get(&(ns.clone(), view.private_service.clone())),
            port,
        );
        let cc = u32::try_from(rev.spec.container_concurrency.unwrap_or(0).max(0)).unwrap_or(0);
        // The activators in the revision's path: its public endpoints in Proxy mode (in Serve
        // mode they are its pods, and no activator shares them out).
        let public: Vec<IpAddr> = match view.mode {
            SksMode::Proxy => addresses(
                endpoints.get(&(ns.clone(), view.public_service.clone())),
                PORT_HTTP,
                true,
            )
            .into_iter()
            .map(|a| a.ip())
            .collect(),
            SksMode::Serve => Vec::new(),
        };
        let index = me.and_then(|me| public.iter().position(|ip| *ip == me));
        let pods = match index {
            Some(i) if cc > 0 => share_of_pods(&pods, i, public.len()),
            _ => pods,
        };
        let secs = |s: Option<i64>| s.and_then(|s| u64::try_from(s).ok());
        out.push(RevisionEndpoints {
            namespace: ns.clone(),
            name: name.clone(),
            mode: view.mode,
            pods,
            container_concurrency: cc,
            timeout_seconds: secs(rev.spec.timeout_seconds),
            response_start_timeout_seconds: secs(rev.spec.response_start_timeout_seconds),
            h2c,
        });
    }
    Topology {
        activators: Vec::new(),
        revisions: out,
        routes: Vec::new(),
        tls: Vec::new(),
    }
}

/// The pods activator `index` of `activators` sends to, so that each pod's capacity is
/// handed out once across the activators (reference §4.4): with more activators than pods,
/// activator i takes pod i mod pods; otherwise each takes a contiguous run of
/// ⌊pods/activators⌋ and the first (pods mod activators) take one of the rest each.
pub fn share_of_pods(pods: &[SocketAddr], index: usize, activators: usize) -> Vec<SocketAddr> {
    if activators <= 1 || pods.is_empty() || index >= activators {
        return pods.to_vec();
    }
    if activators > pods.len() {
        return vec![pods[index % pods.len()]];
    }
    let size = pods.len() / activators;
    let mut out = pods[index * size..(index + 1) * size].to_vec();
    let rest = pods.len() % activators;
    if index < rest {
        out.push(pods[activators * size + index]);
    }
    out
}

fn is_marked(ing: &Ingress) -> bool {
    ing.status.observed_generation == ing.metadata.generation
        && ing
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == rouse_api::condition::ConditionStatus::True)
}

/// Writes an Ingress's status as Knative's ingresses do once its config is on the data
/// plane: LoadBalancerReady, NetworkConfigured and Ready, the gateway's Services as its load
/// balancers (the external one public, the cluster-local one private).
async fn mark_ready(client: &kube::Client, ing: &Ingress, load_balancers: &LoadBalancers) {
    let ar = rouse_kube::store::api_resource(&rouse_kube::crd::INGRESS);
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ing.metadata.namespace, &ar);
    let patch = ready_status(
        ing.metadata.generation,
        load_balancers,
        &rouse_api::clock::now_rfc3339(),
    );
    if let Err(e) = api
        .patch_status(
            &ing.metadata.name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        tracing::warn!(ingress = %ing.metadata.name, namespace = %ing.metadata.namespace, error = %e, "marking the Ingress Ready failed");
    }
}

/// The status patch of a programmed Ingress.
pub fn ready_status(generation: i64, load_balancers: &LoadBalancers, now: &str) -> Value {
    let condition = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
    let lb = |domain: &str| json!({"ingress": [{"domainInternal": domain}]});
    json!({"status": {
        "observedGeneration": generation,
        "conditions": [condition("LoadBalancerReady"), condition("NetworkConfigured"), condition("Ready")],
        "publicLoadBalancer": lb(&load_balancers.public),
        "privateLoadBalancer": lb(&load_balancers.private),
    }})
}

#[cfg(test)]
mod tests {
    use super::*;
    use rouse_api::config::network::NetworkConfig;
    use rouse_api::networking::ServerlessService;
    use rouse_api::serving::Route;
    use rouse_kube::revision::{Backend, public_endpoint_slices, public_endpoints};
    use rouse_kube::route::{IngressConfig, ResolvedTarget, ingress};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn objects(values: Vec<Value>) -> Objects {
        objects_by_key(values)
    }

    fn target(tag: &str, revision: &str, percent: i64, h2c: bool) -> ResolvedTarget {
        ResolvedTarget {
            tag: tag.into(),
            revision: revision.into(),
            percent,
            h2c,
        }
    }

    /// The Ingress the controller writes for Route `hello` in `shop`.
    fn route_ingress(targets: &[ResolvedTarget], tag_header_routing: bool) -> Ingress {
        let mut route = Route::default();
        route.metadata.name = "hello".into();
        route.metadata.namespace = "shop".into();
        let network = NetworkConfig {
            ingress_class: ROUSE_CLASS.into(),
            ..NetworkConfig::default()
        };
        let cfg = IngressConfig {
            network,
            domain: "example.com".into(),
            domains: Default::default(),
            tag_header_routing,
        };
        ingress(&route, targets, &Default::default(), &cfg)
    }

    /// The public EndpointSlices the SKS reconciler writes for `revision`.
    fn public_slices(revision: &str, mode: SksMode, pods: &[&str], acts: &[&str]) -> Vec<Value> {
        let mut sks = ServerlessService::default();
        sks.metadata.name = revision.into();
        sks.metadata.namespace = "shop".into();
        sks.spec.mode = match mode {
            SksMode::Serve => rouse_api::networking::SksMode::Serve,
            SksMode::Proxy => rouse_api::networking::SksMode::Proxy,
        };
        let backend = |ip: &&str| Backend {
            ip: ip.parse().unwrap(),
            ready: true,
            pod: None,
            node: None,
        };
        let pods: Vec<Backend> = pods.iter().map(backend).collect();
        let acts: Vec<Backend> = acts.iter().map(backend).collect();
        let eps = public_endpoints(&sks, &pods, &acts);
        public_endpoint_slices(&sks, &eps)
            .into_iter()
            .map(|s| serde_json::to_value(s).unwrap())
            .collect()
    }

    /// A private Service's slice as Kubernetes' EndpointSlice controller writes it.
    fn private_slice(revision: &str, n: usize, eps: &[(&str, bool)], port: u16) -> Value {
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{revision}-private-{n}"), "namespace": "shop",
                "labels": {"kubernetes.io/service-name": format!("{revision}-private"),
                           "networking.internal.knative.dev/serviceType": "Private"}},
            "addressType": "IPv4",
            "endpoints": eps.iter().map(|(ip, ready)| json!({"addresses": [ip], "conditions": {"ready": ready}})).collect::<Vec<_>>(),
            "ports": [{"name": "http", "port": port, "protocol": "TCP"},
                      {"name": "http2", "port": 8013, "protocol": "TCP"}],
        })
    }

    #[test]
    fn ingress_rules_become_hosts_splits_and_endpoints() {
        let ing = route_ingress(
            &[
                target("", "hello-00001", 80, false),
                target("", "hello-00002", 20, true),
                target("canary", "hello-00002", 100, true),
            ],
            false,
        );
        let mut slices = public_slices(
            "hello-00001",
            SksMode::Serve,
            &["10.0.0.1", "10.0.0.2"],
            &[],
        );
        slices.extend(public_slices(
            "hello-00002",
            SksMode::Proxy,
            &[],
            &["10.1.0.9"],
        ));
        let t = gateway_topology(&[ing], &objects(slices), &Objects::new());

        let route = |host: &str| {
            t.routes
                .iter()
                .find(|r| r.host == host)
                .unwrap_or_else(|| panic!("no {host} in {:?}", t.routes))
        };
        let main = route("hello.shop.example.com");
        let split: Vec<(&str, u32)> = main
            .targets
            .iter()
            .map(|x| (x.revision.as_str(), x.percent))
            .collect();
        assert_eq!(split, [("hello-00001", 80), ("hello-00002", 20)]);
        assert!(main.tag_routes.is_empty());
        // Cluster-local forms of the host route the same way.
        assert_eq!(route("hello.shop.svc.cluster.local").targets, main.targets);
        assert_eq!(
            route("canary-hello.shop.example.com").targets[0].revision,
            "hello-00002"
        );

        // Serve mode: the pods on the HTTP/1.1 port; Proxy mode: the activator on h2c's.
        let rev = |name: &str| t.revisions.iter().find(|r| r.name == name).unwrap();
        assert_eq!(
            rev("hello-00001").pods,
            [addr("10.0.0.1:8012"), addr("10.0.0.2:8012")]
        );
        assert!(!rev("hello-00001").h2c);
        assert_eq!(rev("hello-00002").pods, [addr("10.1.0.9:8013")]);
        assert!(rev("hello-00002").h2c);
        assert_eq!(rev("hello-00002").namespace, "shop");
    }

    #[test]
    fn tag_header_paths_become_tag_routes_with_their_headers() {
        let ing = route_ingress(
            &[
                target("", "hello-00001", 100, false),
                target("blue", "hello-00002", 100, false),
            ],
            true,
        );
        let t = gateway_topology(&[ing], &Objects::new(), &Objects::new());
        let main = t
            .routes
            .iter()
            .find(|r| r.host == "hello.shop.example.com")
            .unwrap();
        assert_eq!(main.targets[0].revision, "hello-00001");
        assert_eq!(
            main.append_headers
                .get("Knative-Serving-Default-Route")
                .map(String::as_str),
            Some("true")
        );
        assert_eq!(main.tag_routes.len(), 1);
        let rule = &main.tag_routes[0];
        assert_eq!(rule.tag, "blue");
        assert_eq!(rule.targets[0].revision, "hello-00002");
        assert_eq!(
            rule.append_headers
                .get("Knative-Serving-Tag")
                .map(String::as_str),
            Some("blue")
        );
        // No slices yet: the revisions are known, with nowhere to send.
        assert!(t.revisions.iter().all(|r| r.pods.is_empty()));
    }

    #[test]
    fn a_domain_mappings_rewrite_host_serves_its_domain_as_the_target_host() {
        let route = route_ingress(&[target("", "hello-00001", 100, false)], false);
        let mut dm = rouse_api::domainmapping::DomainMapping::default();
        dm.metadata.name = "app.example.org".into();
        dm.metadata.namespace = "shop".into();
        dm.spec.ref_.name = "hello".into();
        let cfg = IngressConfig {
            network: NetworkConfig {
                ingress_class: ROUSE_CLASS.into(),
                ..NetworkConfig::default()
            },
            domain: "example.com".into(),
            domains: Default::default(),
            tag_header_routing: false,
        };
        let mapped = rouse_kube::domainmapping::ingress(&dm, &cfg);
        let t = gateway_topology(&[route, mapped], &Objects::new(), &Objects::new());
        let domain = t
            .routes
            .iter()
            .find(|r| r.host == "app.example.org")
            .expect("the mapped domain is served");
        assert_eq!(
            domain.rewrite_host.as_deref(),
            Some("hello.shop.svc.cluster.local")
        );
        assert!(domain.targets.is_empty() && domain.tag_routes.is_empty());
        assert_eq!(
            domain
                .append_headers
                .get("K-Original-Host")
                .map(String::as_str),
            Some("app.example.org")
        );
        // The target host is the route's own cluster-local host; the mapping's split (the
        // target's Service, not a revision) is no revision of the gateway's.
        assert!(
            t.routes
                .iter()
                .any(|r| r.host == "hello.shop.svc.cluster.local")
        );
        let revisions: Vec<&str> = t.revisions.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(revisions, ["hello-00001"]);
    }

    #[test]
    fn only_the_gateways_class_is_served_and_the_first_ingress_wins_a_host() {
        let mut ours = route_ingress(&[target("", "hello-00001", 100, false)], false);
        ours.metadata.name = "a".into();
        let mut theirs = ours.clone();
        theirs.metadata.name = "b".into();
        theirs.metadata.annotations.insert(
            rouse_api::ingress::ANNOTATION_CLASS.into(),
            "istio.ingress.networking.knative.dev".into(),
        );
        let mut later = ours.clone();
        later.metadata.name = "c".into();
        later.spec.rules[0].http.as_mut().unwrap().paths[0].splits[0].service_name = "other".into();
        let mut values: Vec<Value> = [&ours, &theirs, &later]
            .iter()
            .map(|i| serde_json::to_value(i).unwrap())
            .collect();
        // Another implementation's Ingress with fields Rouse's types do not know: not ours,
        // so never decoded.
        let mut foreign = values[1].clone();
        foreign["metadata"]["name"] = "d".into();
        foreign["spec"]["someoneElsesField"] = json!({"x": 1});
        values.push(foreign);
        let objs = objects(values);
        let decoded = decode_ingresses(&objs, ROUSE_CLASS);
        let names: Vec<&str> = decoded.iter().map(|i| i.metadata.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        let t = gateway_topology(&decoded, &Objects::new(), &Objects::new());
        let hosts: Vec<&HostRoute> = t
            .routes
            .iter()
            .filter(|r| r.host == "hello.shop.svc.cluster.local")
            .collect();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].targets[0].revision, "hello-00001");
    }

    fn revision(name: &str, cc: i64, h2c: bool) -> Value {
        let port = if h2c {
            json!([{"name": "h2c", "containerPort": 8080}])
        } else {
            json!([])
        };
        json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Revision",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"containerConcurrency": cc, "timeoutSeconds": 42,
                     "responseStartTimeoutSeconds": 7,
                     "containers": [{"image": "app", "ports": port}]},
        })
    }

    /// A ServerlessService as the controller writes it (named after its revision, owned by
    /// it), with `status.privateServiceName` once reconciled.
    fn sks_value(revision: &str, mode: &str, private: Option<&str>) -> Value {
        let mut v = json!({
            "apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "ServerlessService",
            "metadata": {"name": revision, "namespace": "shop",
                "ownerReferences": [{"apiVersion": "serving.knative.dev/v1", "kind": "Revision",
                                     "name": revision, "uid": "u"}]},
            "spec": {"mode": mode, "protocolType": "http1",
                     "objectRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                   "name": format!("{revision}-deployment")}},
        });
        if let Some(p) = private {
            v["status"] = json!({"serviceName": revision, "privateServiceName": p});
        }
        v
    }

    #[test]
    fn the_activator_follows_serverless_services_for_mode_private_service_and_existence() {
        let revisions = objects(vec![
            revision("hello-00001", 0, false),
            revision("other-00001", 0, false),
        ]);
        // The private Service named by the SKS's status, not derived from the revision.
        let mut custom = private_slice("hello-00001", 0, &[("10.0.0.7", true)], 8012);
        custom["metadata"]["name"] = json!("hello-custom-0");
        custom["metadata"]["labels"]["kubernetes.io/service-name"] = json!("hello-custom");
        let slices = objects(vec![
            custom,
            private_slice("hello-00001", 0, &[("10.0.0.1", true)], 8012),
            private_slice("other-00001", 0, &[("10.0.0.3", true)], 8012),
        ]);
        let view = |sks: Vec<Value>| {
            activator_topology(
                &revisions,
                &objects(sks),
                &slices,
                None,
                &mut PodsSeen::default(),
            )
        };
        let t = view(vec![sks_value(
            "hello-00001",
            "Serve",
            Some("hello-custom"),
        )]);
        // other-00001 has no SKS: not known.
        assert_eq!(t.revisions.len(), 1, "{:?}", t.revisions);
        let hello = &t.revisions[0];
        assert_eq!(
            (hello.name.as_str(), hello.mode, hello.pods.as_slice()),
            (
                "hello-00001",
                SksMode::Serve,
                [addr("10.0.0.7:8012")].as_slice()
            )
        );
        // Before the SKS has a status: the `{revision}-private` Service.
        let t = view(vec![
            sks_value("hello-00001", "Proxy", None),
            sks_value("other-00001", "Proxy", None),
        ]);
        let rev = |t: &Topology, name: &str| t.revisions.iter().find(|r| r.name == name).cloned();
        let hello = rev(&t, "hello-00001").unwrap();
        assert_eq!(
            (hello.mode, hello.pods.as_slice()),
            (SksMode::Proxy, [addr("10.0.0.1:8012")].as_slice())
        );
        assert_eq!(
            rev(&t, "other-00001").unwrap().pods,
            [addr("10.0.0.3:8012")]
        );
        // An SKS names its revision by label too (Knative's), whatever its own name.
        let mut labelled = sks_value("renamed", "Proxy", None);
        labelled["metadata"]["labels"] = json!({"serving.knative.dev/revision": "other-00001"});
        labelled["metadata"]["ownerReferences"] = json!([]);
        let t = view(vec![labelled]);
        let names: Vec<&str> = t.revisions.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["other-00001"]);
        // Its SKS gone, the revision is forgotten.
        assert!(view(Vec::new()).revisions.is_empty());
    }

    #[test]
    fn the_activator_learns_parameters_and_all_pods_probing_the_unready_too() {
        let revisions = objects(vec![
            revision("hello-00001", 0, false),
            revision("grpc-00001", 0, true),
        ]);
        let slices = objects(vec![
            private_slice(
                "hello-00001",
                0,
                &[("10.0.0.2", true), ("10.0.0.1", false)],
                8012,
            ),
            private_slice("grpc-00001", 0, &[("10.0.0.5", true)], 8012),
        ]);
        let sks = objects(vec![
            sks_value("hello-00001", "Proxy", None),
            sks_value("grpc-00001", "Proxy", None),
        ]);
        let t = activator_topology(&revisions, &sks, &slices, None, &mut PodsSeen::default());
        let rev = |name: &str| t.revisions.iter().find(|r| r.name == name).unwrap();
        let hello = rev("hello-00001");
        assert_eq!(hello.pods, [addr("10.0.0.1:8012"), addr("10.0.0.2:8012")]);
        assert_eq!(
            (
                hello.timeout_seconds,
                hello.response_start_timeout_seconds,
                hello.h2c
            ),
            (Some(42), Some(7), false)
        );
        // An h2c revision is reached on the pods' h2c port.
        let grpc = rev("grpc-00001");
        assert_eq!(
            (grpc.pods.as_slice(), grpc.h2c),
            ([addr("10.0.0.5:8013")].as_slice(), true)
        );
    }

    #[test]
    fn a_pod_whose_readiness_fails_after_it_was_ready_gets_no_new_request_until_ready_again() {
        let revisions = objects(vec![revision("hello-00001", 0, false)]);
        let slices =
            |pods: &[(&str, bool)]| objects(vec![private_slice("hello-00001", 0, pods, 8012)]);
        let sks = objects(vec![sks_value("hello-00001", "Proxy", None)]);
        let mut seen = PodsSeen::default();
        let pods = |seen: &mut PodsSeen, eps: &[(&str, bool)]| {
            activator_topology(&revisions, &sks, &slices(eps), None, seen).revisions[0]
                .pods
                .clone()
        };
        // Starting (never ready): probed by the activator itself, so listed.
        assert_eq!(
            pods(&mut seen, &[("10.0.0.1", true), ("10.0.0.2", false)]),
            [addr("10.0.0.1:8012"), addr("10.0.0.2:8012")]
        );
        // 10.0.0.1 was ready and its probe now fails: out.
        assert_eq!(
            pods(&mut seen, &[("10.0.0.1", false), ("10.0.0.2", true)]),
            [addr("10.0.0.2:8012")]
        );
        // Ready again: back.
        assert_eq!(
            pods(&mut seen, &[("10.0.0.1", true), ("10.0.0.2", true)]),
            [addr("10.0.0.1:8012"), addr("10.0.0.2:8012")]
        );
    }

    #[test]
    fn with_a_concurrency_each_activator_in_the_path_takes_its_share_of_the_pods() {
        let revisions = objects(vec![revision("hello-00001", 10, false)]);
        let pods = [("10.0.0.1", true), ("10.0.0.2", true), ("10.0.0.3", true)];
        let mut slices = vec![private_slice("hello-00001", 0, &pods, 8012)];
        slices.extend(public_slices(
            "hello-00001",
            SksMode::Proxy,
            &[],
            &["10.9.0.1", "10.9.0.2"],
        ));
        let slices = objects(slices);
        let sks = objects(vec![sks_value("hello-00001", "Proxy", None)]);
        let pods_of = |me: Option<&str>| {
            let t = activator_topology(
                &revisions,
                &sks,
                &slices,
                me.map(|m| m.parse().unwrap()),
                &mut PodsSeen::default(),
            );
            t.revisions[0].pods.clone()
        };
        // Three pods over two activators: one each, and the first takes the third.
        assert_eq!(
            pods_of(Some("10.9.0.1")),
            [addr("10.0.0.1:8012"), addr("10.0.0.3:8012")]
        );
        assert_eq!(pods_of(Some("10.9.0.2")), [addr("10.0.0.2:8012")]);
        // An activator outside the revision's path (or outside the cluster) takes all.
        assert_eq!(pods_of(Some("10.9.0.7")).len(), 3);
        assert_eq!(pods_of(None).len(), 3);
    }

    #[test]
    fn shares_cover_every_pod_once_and_spread_when_activators_outnumber_pods() {
        let pods: Vec<SocketAddr> = (1..=7).map(|i| addr(&format!("10.0.0.{i}:8012"))).collect();
        for activators in 1..=7 {
            let mut all: Vec<SocketAddr> = (0..activators)
                .flat_map(|i| share_of_pods(&pods, i, activators))
                .collect();
            all.sort();
            assert_eq!(all, pods, "{activators} activators");
        }
        let two = &pods[..2];
        let picks: Vec<SocketAddr> = (0..5).map(|i| share_of_pods(two, i, 5)[0]).collect();
        assert_eq!(picks, [two[0], two[1], two[0], two[1], two[0]]);
        assert!(share_of_pods(&[], 0, 3).is_empty());
    }

    /// An Ingress written by hand: `rules` as JSON.
    fn ingress_json(spec: Value) -> Ingress {
        serde_json::from_value(json!({
            "apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "Ingress",
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn split(rev: &str) -> Value {
        json!([{"serviceNamespace": "shop", "serviceName": rev, "servicePort": 80, "percent": 100}])
    }

    #[test]
    fn paths_and_header_matches_become_path_rules_and_tags_stay_host_only() {
        let ing = ingress_json(json!({"rules": [
            {"hosts": ["api.example.com"], "visibility": "ExternalIP", "http": {"paths": [
                {"path": "/v1", "splits": split("v1"), "appendHeaders": {"X-Api": "v1"}},
                {"headers": {"X-Canary": {"exact": "yes"}}, "splits": split("canary")},
                {"splits": split("root")},
            ]}},
            {"hosts": ["tags.example.com"], "visibility": "ExternalIP", "http": {"paths": [
                {"headers": {"Knative-Serving-Tag": {"exact": "blue"}}, "splits": split("blue")},
                {"path": "/", "splits": split("root")},
            ]}},
        ]}));
        let t = gateway_topology(&[ing], &Objects::new(), &Objects::new());
        let api = t
            .routes
            .iter()
            .find(|r| r.host == "api.example.com")
            .unwrap();
        assert!(api.targets.is_empty() && api.tag_routes.is_empty() && !api.redirect);
        let paths: Vec<(&str, usize, &str)> = api
            .paths
            .iter()
            .map(|p| {
                (
                    p.path.as_str(),
                    p.headers.len(),
                    p.targets[0].revision.as_str(),
                )
            })
            .collect();
        assert_eq!(
            paths,
            [("/v1", 0, "v1"), ("", 1, "canary"), ("", 0, "root")]
        );
        assert_eq!(api.paths[1].headers["X-Canary"], "yes");
        assert_eq!(api.paths[0].append_headers["X-Api"], "v1");
        // A split's own headers go with it.
        let ing = ingress_json(json!({"rules": [
            {"hosts": ["split.example.com"], "visibility": "ExternalIP", "http": {"paths": [
                {"splits": [{"serviceNamespace": "shop", "serviceName": "a", "servicePort": 80,
                             "percent": 100, "appendHeaders": {"X-Split": "a",
                             "Knative-Serving-Revision": "a", "Knative-Serving-Namespace": "shop"}}]},
            ]}},
        ]}));
        let split_route = &gateway_topology(&[ing], &Objects::new(), &Objects::new()).routes[0];
        assert!(split_route.targets.is_empty());
        assert_eq!(
            split_route.paths[0].targets[0].append_headers,
            BTreeMap::from([("X-Split".to_string(), "a".to_string())])
        );
        // The tag-header form keeps the Host-only routing (and the fast path for the rest).
        let tags = t
            .routes
            .iter()
            .find(|r| r.host == "tags.example.com")
            .unwrap();
        assert!(tags.paths.is_empty());
        assert_eq!(tags.targets[0].revision, "root");
        assert_eq!(tags.tag_routes[0].tag, "blue");
        let mut revs: Vec<&str> = t.revisions.iter().map(|r| r.name.as_str()).collect();
        revs.sort_unstable();
        assert_eq!(revs, ["blue", "canary", "root", "v1"]);
    }

    #[test]
    fn redirected_applies_to_external_rules_and_cluster_local_rules_answer_local_names_only() {
        let ing = ingress_json(json!({"httpOption": "Redirected", "rules": [
            {"hosts": ["hello.shop", "hello.shop.svc", "hello.shop.svc.cluster.local", "public.example.com"],
             "visibility": "ClusterLocal", "http": {"paths": [{"splits": split("hello-1")}]}},
            {"hosts": ["hello.shop.example.com"], "visibility": "ExternalIP",
             "http": {"paths": [{"splits": split("hello-1")}]}},
        ]}));
        let t = gateway_topology(&[ing], &Objects::new(), &Objects::new());
        let hosts: Vec<(&str, bool, bool)> = t
            .routes
            .iter()
            .map(|r| (r.host.as_str(), r.redirect, r.cluster_local))
            .collect();
        assert_eq!(
            hosts,
            [
                ("hello.shop", false, true),
                ("hello.shop.svc", false, true),
                ("hello.shop.svc.cluster.local", false, true),
                ("hello.shop.example.com", true, false),
            ]
        );
    }

    fn tls_secret(ns: &str, name: &str, cert: &str, key: &str) -> Value {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": ns},
            "data": {"tls.crt": b64(cert), "tls.key": b64(key)},
        })
    }

    #[test]
    fn tls_entries_take_their_certificates_from_the_named_secrets() {
        let ing = ingress_json(json!({
            "tls": [
                {"hosts": ["a.example.com"], "secretName": "a-cert", "secretNamespace": "certs"},
                {"hosts": ["b.example.com"], "secretName": "b-cert"},
                {"hosts": ["c.example.com"], "secretName": "missing"},
            ],
            "rules": [{"hosts": ["a.example.com"], "visibility": "ExternalIP",
                       "http": {"paths": [{"splits": split("hello-1")}]}}],
        }));
        let secrets = objects(vec![
            tls_secret("certs", "a-cert", "A-CERT", "A-KEY"),
            tls_secret("shop", "b-cert", "B-CERT", "B-KEY"),
            // Same name, another namespace: not the one named.
            tls_secret("other", "missing", "X", "X"),
        ]);
        let t = gateway_topology(&[ing], &Objects::new(), &secrets);
        let certs: Vec<(&str, &str, &str)> = t
            .tls
            .iter()
            .map(|c| (c.hosts[0].as_str(), c.certificate.as_str(), c.key.as_str()))
            .collect();
        assert_eq!(
            certs,
            [
                ("a.example.com", "A-CERT", "A-KEY"),
                ("b.example.com", "B-CERT", "B-KEY")
            ]
        );
        // The key never shows in a debug print.
        assert!(!format!("{:?}", t.tls).contains("A-KEY"));
    }

    #[test]
    fn a_programmed_ingress_is_marked_ready_with_the_gateway_as_its_load_balancer() {
        let mut ing = route_ingress(&[target("", "hello-00001", 100, false)], false);
        ing.metadata.generation = 3;
        assert!(!is_marked(&ing));
        let patch = ready_status(3, &LoadBalancers::installed(), "2026-01-01T00:00:00Z");
        let status: rouse_api::ingress::IngressStatus =
            serde_json::from_value(patch["status"].clone()).unwrap();
        ing.status = status;
        assert!(is_marked(&ing));
        let types: Vec<&str> = ing
            .status
            .conditions
            .iter()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(types, ["LoadBalancerReady", "NetworkConfigured", "Ready"]);
        assert_eq!(
            ing.status.public_load_balancer.as_ref().unwrap().ingress[0].domain_internal,
            "rouse-gateway.knative-serving.svc.cluster.local"
        );
        // Cluster-local callers are sent to the cluster-local Service.
        assert_eq!(
            ing.status.private_load_balancer.as_ref().unwrap().ingress[0].domain_internal,
            "rouse-gateway-local.knative-serving.svc.cluster.local"
        );
        // A new generation needs marking again.
        ing.metadata.generation = 4;
        assert!(!is_marked(&ing));
    }
}

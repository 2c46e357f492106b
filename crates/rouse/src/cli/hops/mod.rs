//! `rouse activator` and `rouse gateway` as processes of their own: the same behaviours local
//! mode fuses into one process ([`rouse_activator::Activator`], [`rouse_gateway::Gateway`]),
//! fed by an [`endpoints::EndpointsSource`] (a static file, or the Kubernetes API:
//! [`kube::KubeSource`]) and talking to each other and to the queue-proxy sidecars over the
//! network. With the Kubernetes API, `/readyz` answers 503 until the first full sync.
//!
//! The gateway sends a revision's requests to its pods in Serve mode and to the activators in
//! Proxy mode (as Knative's public Service endpoints do), naming the revision in
//! `Knative-Serving-Namespace` / `Knative-Serving-Revision`; the activator buffers them until
//! one of the revision's pods passes its probe.

pub mod endpoints;
pub mod kube;
pub mod stats_push;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Args;
use http::{Request, StatusCode};
use hyper::service::service_fn;
use rouse_activator::{Activator, ActivatorConfig, RevisionParams};
use rouse_gateway::{
    Certificates, Gateway, Mode, PathRule, RouteTarget, RoutingTable, SetHeader, Visibility,
};
use rouse_http::PROBE_HEADER;
use rouse_http::{Body, full, text_response};
use tokio::net::TcpListener;

use endpoints::{
    EndpointsSource, FileSource, RevisionEndpoints, SksMode, SourceError, Target, TlsCertificate,
    Topology,
};
use kube::KubeSource;

/// The header naming the revision's namespace on requests sent to an activator.
const NAMESPACE_HEADER: &str = "knative-serving-namespace";
/// The header naming the revision on requests sent to an activator.
const REVISION_HEADER: &str = "knative-serving-revision";

/// `rouse activator` / `rouse gateway` arguments.
#[derive(Debug, Clone, Args)]
pub struct HopArgs {
    /// Where to listen (port 0: a free one; the address is printed on stdout). Default: the
    /// install manifests' ports, 0.0.0.0:8012 for the activator, 0.0.0.0:8080 for the gateway.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The static description of revisions, pods, activators and routes (JSON), re-read
    /// when it changes. Without it, the Kubernetes API (`--kubeconfig`, else in-cluster).
    #[arg(long, conflicts_with = "kubeconfig")]
    pub endpoints: Option<PathBuf>,
    /// A kubeconfig for the cluster to follow (the gateway: Ingresses and public
    /// EndpointSlices; the activator: Revisions, their ServerlessServices and EndpointSlices,
    /// and its ConfigMaps in knative-serving). Without it and without `--endpoints`, the
    /// in-cluster service account.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The activator's second port (Knative's 8013, where the public Services send h2c
    /// revisions' requests). Default: 0.0.0.0:8013 when `--listen` is not given, else none.
    #[arg(long)]
    pub listen_h2c: Option<SocketAddr>,
    /// The gateway's HTTPS port (certificates from the Ingresses' `spec.tls` Secrets, chosen
    /// by SNI). Default: 0.0.0.0:8443 when `--listen` is not given, else none.
    #[arg(long)]
    pub listen_tls: Option<SocketAddr>,
    /// The gateway's cluster-local port (plain HTTP/1.1 and h2c), the only one serving the
    /// hosts of `ClusterLocal` Ingress rules (`--listen` and `--listen-tls` answer them 404);
    /// it serves the external hosts too. Default: 0.0.0.0:8081 when `--listen` is not given,
    /// else none.
    #[arg(long)]
    pub listen_local: Option<SocketAddr>,
    /// The gateway's Ingress class.
    #[arg(long, default_value = rouse_api::ingress::ROUSE_CLASS)]
    pub ingress_class: String,
    /// This activator's pod IP, to find its share of each revision's pods.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<IpAddr>,
    /// Health checks (`/healthz`, `/readyz`) and metrics (`/metrics`), as the install
    /// manifests' probes expect them.
    #[arg(long, default_value = "0.0.0.0:8022")]
    pub admin: SocketAddr,
    /// The same, on the metrics port.
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub metrics: SocketAddr,
    /// How often the file is looked at.
    #[arg(long, default_value = "100ms", value_parser = parse_millis)]
    pub poll: Duration,
}

/// `rouse activator` arguments: the hop's, and where to push stats and pokes.
#[derive(Debug, Clone, Args)]
pub struct ActivatorArgs {
    #[command(flatten)]
    pub hop: HopArgs,
    #[command(flatten)]
    pub push: stats_push::PushArgs,
}

fn parse_millis(s: &str) -> Result<Duration, String> {
    let n = s.strip_suffix("ms").unwrap_or(s);
    n.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("{s:?} is not a number of milliseconds (like 100ms)"))
}

/// Runs the activator until SIGTERM.
pub async fn run_activator(activator_args: &ActivatorArgs) -> anyhow::Result<()> {
    let args = &activator_args.hop;
    // Without an autoscaler to push to, the wake-up comes from outside (an operator scaling
    // the Deployment, or a test).
    let push =
        stats_push::Target::from_args(&activator_args.push)?.map(stats_push::StatsPush::start);
    let pusher = push.clone();
    let poke: rouse_activator::Poke = Arc::new(move |ns: &str, rev: &str| {
        if let Some(p) = &pusher {
            p.poke(ns, rev);
        }
        tracing::info!(
            namespace = ns,
            revision = rev,
            "activation: requests wait for an instance"
        );
    });
    let activator = Activator::new(ActivatorConfig::default(), poke);
    let mut config = None;
    let (source, first) = open_source(args, |client| {
        config = Some(follow_config(client.clone(), &activator));
        KubeSource::activator(client, args.pod_ip)
    })
    .await?;
    let reporter =
        push.map(|p| tokio::spawn(stats_push::report_every_second(activator.clone(), p)));
    let mut known = Applied::new();
    if let Some(first) = &first {
        apply_to_activator(&activator, first, &mut known);
    }
    let listen = args
        .listen
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 8012)));
    // Knative's h2c port too: the public Services send h2c revisions' requests there. Both
    // ports take HTTP/1.1 and h2c alike.
    let (h2c_listener, also) = bind_second(args, args.listen_h2c, 8013, "h2c").await?;
    let act = activator.clone();
    let (listener, health) =
        bind(listen, args, "activator", &also, move || act.metrics_text()).await?;
    health.ready.store(first.is_some(), Ordering::SeqCst);
    let act = activator.clone();
    let config_synced = config.map(|c| c.synced);
    let watcher = tokio::spawn(follow(source, health.clone(), config_synced, move |t| {
        apply_to_activator(&act, &t, &mut known)
    }));
    let front = Arc::new(rouse_activator::ActivatorFront::new(activator.clone()));
    let make = move |_remote| {
        let activator = activator.clone();
        service_fn(move |req: Request<Body>| {
            let activator = activator.clone();
            async move { Ok::<_, Infallible>(activate(&activator, req).await) }
        })
    };
    let stopped = stop_on_signal(health);
    let h2c = h2c_listener.map(|l| tokio::spawn(rouse_http::serve(l, make.clone(), stopped())));
    // Plain HTTP/1.1 requests are admitted and relayed on the lean fast path; the rest (and
    // the h2c listener) go to `make`.
    let limits = rouse_http::ServerLimits::default();
    rouse_http::serve_front(listener, make, front, stopped(), limits).await;
    if let Some(h2c) = h2c {
        let _ = h2c.await;
    }
    watcher.abort();
    if let Some(r) = reporter {
        r.abort();
    }
    Ok(())
}

async fn activate(activator: &Activator, req: Request<Body>) -> http::Response<Body> {
    if req
        .headers()
        .get(&PROBE_HEADER)
        .is_some_and(|v| v == "activator")
    {
        return http::Response::new(full("activator"));
    }
    let named = (
        header_text(&req, NAMESPACE_HEADER),
        header_text(&req, REVISION_HEADER),
    );
    let (Some(ns), Some(rev)) = named else {
        return text_response(
            StatusCode::NOT_FOUND,
            "no revision named (Knative-Serving-Namespace and Knative-Serving-Revision)",
        );
    };
    activator.handle(&ns, &rev, req).await
}

fn header_text(req: &Request<Body>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// What was last applied per revision, so that a new version touches only the revisions
/// it changes (a cluster's every event would otherwise re-set them all).
type Applied<T> = HashMap<(String, String), T>;

/// Applies `t`'s revisions through `set`, skipping those applied unchanged; returns those no
/// longer listed, for the caller to remove once nothing routes to them.
fn apply_revisions<T: PartialEq>(
    t: &Topology,
    known: &mut Applied<T>,
    state: impl Fn(&RevisionEndpoints) -> T,
    mut set: impl FnMut(&RevisionEndpoints, &T),
) -> Vec<(String, String)> {
    let mut now = Applied::new();
    for r in &t.revisions {
        let key = (r.namespace.clone(), r.name.clone());
        let wanted = state(r);
        if known.get(&key) != Some(&wanted) {
            set(r, &wanted);
        }
        now.insert(key, wanted);
    }
    let gone = known
        .keys()
        .filter(|k| !now.contains_key(*k))
        .cloned()
        .collect();
    *known = now;
    gone
}

/// Follows the activator's ConfigMaps in `knative-serving` (parsed as the controller parses
/// them; a bad one keeps the last good config and is logged once): `config-autoscaler`'s
/// `activator-queue-depth` and `config-network`'s `allow-underscores-in-headers` (which
/// headers reach the apps) take effect as they change.
fn follow_config(
    client: ::kube::Client,
    activator: &Arc<Activator>,
) -> rouse_kube::config_watch::LiveConfig {
    let shared = rouse_api::config::SharedConfig::new(rouse_api::config::Config::default());
    let act = activator.clone();
    shared.on_change(move |c| {
        let depth = c.autoscaler.activator_queue_depth;
        if act.config().queue_depth != depth {
            tracing::info!(depth, "activator-queue-depth applied");
            act.set_queue_depth(depth);
        }
        rouse_http::set_allow_underscores_in_headers(c.network.allow_underscores_in_headers);
    });
    rouse_kube::config_watch::start_reading(
        client,
        &tokio::runtime::Handle::current(),
        rouse_kube::install::NAMESPACE,
        shared,
    )
}

fn apply_to_activator(activator: &Activator, t: &Topology, known: &mut Applied<RevisionEndpoints>) {
    let set = |r: &RevisionEndpoints, _: &RevisionEndpoints| {
        let params = RevisionParams {
            container_concurrency: r.container_concurrency,
            timeout: r
                .timeout_seconds
                .map_or(Duration::ZERO, Duration::from_secs),
            response_start_timeout: r.response_start_timeout_seconds.map(Duration::from_secs),
            h2c: r.h2c,
            ..RevisionParams::default()
        };
        activator.set_revision(&r.namespace, &r.name, params);
        activator.set_backends(&r.namespace, &r.name, r.pods.clone());
    };
    for (ns, rev) in apply_revisions(t, known, Clone::clone, set) {
        activator.remove_revision(&ns, &rev);
    }
}

/// Runs the gateway until SIGTERM.
pub async fn run_gateway(args: &HopArgs) -> anyhow::Result<()> {
    let (source, first) = open_source(args, |client| {
        KubeSource::gateway(
            client,
            args.ingress_class.clone(),
            kube::LoadBalancers::installed(),
        )
    })
    .await?;
    // Used only while a revision has nowhere to send: it refuses at once (see
    // `apply_to_gateway`).
    let fallback = Activator::new(ActivatorConfig::default(), Arc::new(|_: &str, _: &str| {}));
    let gateway = Gateway::new(fallback);
    let certs = Certificates::new();
    let mut known = GatewayApplied::default();
    if let Some(first) = &first {
        apply_to_gateway(&gateway, &certs, first, &mut known);
    }
    let listen = args
        .listen
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 8080)));
    // HTTPS too, and the cluster-local port, on the install's ports unless told otherwise.
    let (tls_listener, mut also) = bind_second(args, args.listen_tls, 8443, "tls").await?;
    let (local_listener, local) = bind_second(args, args.listen_local, 8081, "local").await?;
    also.extend(local);
    let (gw, served) = (gateway.clone(), certs.clone());
    let (listener, health) = bind(listen, args, "gateway", &also, move || {
        gateway_metrics(&gw, &served)
    })
    .await?;
    health.ready.store(first.is_some(), Ordering::SeqCst);
    let (gw, tls_certs) = (gateway.clone(), certs.clone());
    let watcher = tokio::spawn(follow(source, health.clone(), None, move |t| {
        apply_to_gateway(&gw, &tls_certs, &t, &mut known)
    }));
    let stopped = stop_on_signal(health);
    let limits = rouse_http::ServerLimits::default();
    let https =
        tls_listener.map(|l| tokio::spawn(gateway.clone().serve_tls(l, certs, stopped(), limits)));
    let local = local_listener.map(|l| {
        let gw = gateway.clone();
        tokio::spawn(gw.serve_for(Visibility::ClusterLocal, l, stopped(), limits))
    });
    // The main listener is the external one: cluster-local hosts are unknown there.
    gateway
        .serve_for(Visibility::External, listener, stopped(), limits)
        .await;
    for task in [https, local].into_iter().flatten() {
        let _ = task.await;
    }
    watcher.abort();
    Ok(())
}

/// Where the gateway sends a revision's requests: mode, endpoints, h2c.
type GatewayRoute = (Mode, Vec<SocketAddr>, bool);

/// What the gateway last applied: per revision, and the certificates.
#[derive(Default)]
struct GatewayApplied {
    revisions: Applied<GatewayRoute>,
    tls: Vec<TlsCertificate>,
}

fn apply_to_gateway(
    gateway: &Gateway,
    certs: &Certificates,
    t: &Topology,
    known: &mut GatewayApplied,
) {
    if known.tls != t.tls {
        certs.set(certificates(&t.tls));
        known.tls = t.tls.clone();
    }
    // Proxy mode: the activators are the revision's endpoints (as on Kubernetes). With
    // nowhere to send, the gateway's own activator answers 503 at once (as an ingress with
    // no healthy upstream does) instead of holding requests nothing can release.
    let route = |r: &RevisionEndpoints| -> GatewayRoute {
        match r.mode {
            SksMode::Serve if !r.pods.is_empty() => (Mode::Serve, r.pods.clone(), r.h2c),
            _ if !t.activators.is_empty() => (Mode::Serve, t.activators.clone(), r.h2c),
            _ => (Mode::Proxy, Vec::new(), r.h2c),
        }
    };
    let set = |r: &RevisionEndpoints, (mode, endpoints, h2c): &GatewayRoute| {
        let refusal = (*mode == Mode::Proxy).then(|| {
            format!(
                "revision {}/{} has no endpoints: no pod and no activator is ready",
                r.namespace, r.name
            )
        });
        gateway
            .activator()
            .set_refusal(&r.namespace, &r.name, refusal);
        gateway.set_revision(&r.namespace, &r.name, *mode, endpoints.clone(), *h2c);
    };
    let gone = apply_revisions(t, &mut known.revisions, route, set);
    let mut table = RoutingTable::new();
    for route in &t.routes {
        let host = &route.host;
        if route.cluster_local {
            table.insert_cluster_local(host.clone());
        }
        if route.redirect {
            table.insert_redirect(host.clone());
        }
        if !route.paths.is_empty() {
            let rules = route
                .paths
                .iter()
                .filter_map(|p| {
                    // A match that cannot be checked must not turn into no match at all.
                    let Some(headers) = header_matches(&p.headers) else {
                        tracing::warn!(host = %host, path = %p.path, "a header match is not a valid header; the path is not served");
                        return None;
                    };
                    Some((p, headers))
                })
                .map(|(p, headers)| PathRule {
                    prefix: p.path.clone(),
                    headers,
                    targets: route_targets(&p.targets),
                    appended: set_headers(&p.append_headers),
                    target_appended: p
                        .targets
                        .iter()
                        .map(|t| set_headers(&t.append_headers))
                        .collect(),
                })
                .collect();
            table.insert_rules(host.clone(), rules);
            continue;
        }
        if let Some(target) = &route.rewrite_host {
            // A mapped domain: served as its target host, with its own appended headers
            // (`K-Original-Host`).
            table.insert_alias(host.clone(), target.clone());
            table.insert_appended(
                host.clone(),
                String::new(),
                set_headers(&route.append_headers),
            );
            continue;
        }
        table.insert(host.clone(), route_targets(&route.targets));
        table.insert_appended(
            host.clone(),
            String::new(),
            set_headers(&route.append_headers),
        );
        for t in &route.tag_routes {
            table.insert_tag(host.clone(), t.tag.clone(), route_targets(&t.targets));
            table.insert_appended(host.clone(), t.tag.clone(), set_headers(&t.append_headers));
        }
    }
    gateway.set_routes(table);
    // Only now that no route names them.
    for (ns, rev) in gone {
        gateway.remove_revision(&ns, &rev);
        gateway.activator().remove_revision(&ns, &rev);
    }
}

/// The certificates by host name; one that does not load is left out (logged), so its hosts'
/// handshakes are refused rather than served another's.
fn certificates(entries: &[TlsCertificate]) -> HashMap<String, Arc<rustls::sign::CertifiedKey>> {
    let mut out = HashMap::new();
    for entry in entries {
        match rouse_gateway::certified_key(entry.certificate.as_bytes(), entry.key.as_bytes()) {
            Ok(key) => {
                for host in &entry.hosts {
                    out.entry(host.clone()).or_insert_with(|| key.clone());
                }
            }
            Err(e) => {
                tracing::warn!(hosts = ?entry.hosts, error = %e, "a TLS certificate does not load; its hosts get none");
            }
        }
    }
    out
}

fn route_targets(targets: &[Target]) -> Vec<RouteTarget> {
    targets
        .iter()
        .map(|x| RouteTarget {
            namespace: x.namespace.clone(),
            revision: x.revision.clone(),
            percent: x.percent,
        })
        .collect()
}

/// Header matches as the gateway checks them; `None` if any is not a valid header.
fn header_matches(headers: &std::collections::BTreeMap<String, String>) -> Option<Vec<SetHeader>> {
    headers
        .iter()
        .map(|(name, value)| {
            Some((
                http::HeaderName::try_from(name.as_str()).ok()?,
                http::HeaderValue::try_from(value.as_str()).ok()?,
            ))
        })
        .collect()
}

/// Header names and values as the gateway sets them; an invalid one is left out (logged).
fn set_headers(headers: &std::collections::BTreeMap<String, String>) -> Vec<SetHeader> {
    headers
        .iter()
        .filter_map(|(name, value)| {
            match (
                http::HeaderName::try_from(name.as_str()),
                http::HeaderValue::try_from(value.as_str()),
            ) {
                (Ok(n), Ok(v)) => Some((n, v)),
                _ => {
                    tracing::warn!(header = %name, "not a valid header; left out");
                    None
                }
            }
        })
        .collect()
}

/// The file or the Kubernetes API, as the arguments say.
enum Source {
    File(FileSource),
    Kube(Box<KubeSource>),
}

impl EndpointsSource for Source {
    async fn next(&mut self) -> Result<Topology, SourceError> {
        match self {
            Source::File(f) => f.next().await,
            Source::Kube(k) => k.next().await,
        }
    }
}

/// The source the arguments name, with the file's first version (read now, so a bad file
/// stops the process at start). The API's first version comes once it is synced.
async fn open_source(
    args: &HopArgs,
    kube_source: impl FnOnce(::kube::Client) -> KubeSource,
) -> anyhow::Result<(Source, Option<Topology>)> {
    if let Some(path) = &args.endpoints {
        let first = FileSource::read(path)?;
        return Ok((
            Source::File(FileSource::new(path.clone(), args.poll)),
            Some(first),
        ));
    }
    let client = super::controller::kube_client(args.kubeconfig.as_deref())
        .await
        .map_err(|e| anyhow::anyhow!("{e:#} (without a cluster, give --endpoints FILE)"))?;
    Ok((Source::Kube(Box::new(kube_source(client))), None))
}

/// Applies every new version of the description; a bad one is reported and the last good one
/// stays in force. The process is ready once one version is applied (and `config_synced`, if
/// given, says its ConfigMaps were read).
async fn follow<S: EndpointsSource>(
    mut source: S,
    health: Arc<Health>,
    config_synced: Option<tokio::sync::watch::Receiver<bool>>,
    mut apply: impl FnMut(Topology) + Send,
) {
    if let Some(mut synced) = config_synced {
        let _ = synced.wait_for(|s| *s).await;
    }
    // A file's first version was applied before serving; applying it again changes nothing,
    // and a change made since is not missed.
    loop {
        match source.next().await {
            Ok(t) => {
                apply(t);
                if !health.ready.swap(true, Ordering::SeqCst) {
                    tracing::info!("synced: serving what the source describes");
                }
            }
            Err(e) => tracing::warn!(error = %e, "endpoints not updated"),
        }
    }
}

fn gateway_metrics(gateway: &Gateway, certs: &Certificates) -> String {
    format!(
        "# HELP rouse_gateway_requests_in_flight Requests in the gateway now.\n\
         # TYPE rouse_gateway_requests_in_flight gauge\n\
         rouse_gateway_requests_in_flight {}\n\
         # HELP rouse_gateway_tls_hosts Host names the HTTPS listener has a certificate for.\n\
         # TYPE rouse_gateway_tls_hosts gauge\n\
         rouse_gateway_tls_hosts {}\n",
        gateway.in_flight(),
        certs.len()
    )
}

/// The process's health: live unless draining (SIGTERM came); ready once its source was
/// synced and while not draining.
#[derive(Default)]
struct Health {
    draining: AtomicBool,
    ready: AtomicBool,
}

/// Binds the serving listener and the admin and metrics ports (health checks and `metrics`
/// on both), and prints one line with the addresses (and those of `also`, bound already).
async fn bind(
    listen: SocketAddr,
    args: &HopArgs,
    what: &str,
    also: &[(&str, SocketAddr)],
    metrics: impl Fn() -> String + Send + Sync + 'static,
) -> anyhow::Result<(TcpListener, Arc<Health>)> {
    let bind_one = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))
    };
    let l = bind_one(listen).await?;
    let admin = bind_one(args.admin).await?;
    let metrics_port = bind_one(args.metrics).await?;
    let also: String = also.iter().map(|(k, a)| format!(" {k}={a}")).collect();
    println!(
        "rouse {what}: listening={} admin={} metrics={}{also}",
        l.local_addr()?,
        admin.local_addr()?,
        metrics_port.local_addr()?
    );
    let _ = std::io::stdout().flush();
    let health = Arc::new(Health::default());
    let metrics: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(metrics);
    for port in [admin, metrics_port] {
        tokio::spawn(serve_admin(port, health.clone(), metrics.clone()));
    }
    Ok((l, health))
}

async fn serve_admin(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: Arc<dyn Fn() -> String + Send + Sync>,
) {
    let make = |_remote| {
        let health = health.clone();
        let metrics = metrics.clone();
        service_fn(move |req: Request<Body>| {
            let resp = match req.uri().path() {
                "/healthz" | "/readyz" if health.draining.load(Ordering::SeqCst) => {
                    text_response(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
                }
                "/readyz" if !health.ready.load(Ordering::SeqCst) => text_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not synced with the source yet",
                ),
                "/healthz" | "/readyz" => text_response(StatusCode::OK, "ok"),
                "/metrics" => text_response(StatusCode::OK, metrics()),
                _ => text_response(StatusCode::NOT_FOUND, "not found"),
            };
            async move { Ok::<_, Infallible>(resp) }
        })
    };
    rouse_http::serve(listener, make, std::future::pending()).await;
}

/// A process's second listener: at `addr` if given, else on `default_port` of every address
/// when `--listen` was not given either (the install's ports), else none; with its name and
/// address for the line the process prints.
async fn bind_second(
    args: &HopArgs,
    addr: Option<SocketAddr>,
    default_port: u16,
    name: &'static str,
) -> anyhow::Result<(Option<TcpListener>, Vec<(&'static str, SocketAddr)>)> {
    let addr = addr.or_else(|| {
        args.listen
            .is_none()
            .then(|| SocketAddr::from(([0, 0, 0, 0], default_port)))
    });
    let Some(addr) = addr else {
        return Ok((None, Vec::new()));
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    Ok((Some(listener), vec![(name, bound)]))
}

/// Makes futures that resolve once SIGTERM or SIGINT came (marking the process draining):
/// one per listener, so each stops accepting and drains.
fn stop_on_signal(
    health: Arc<Health>,
) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        terminated_then(health).await;
        let _ = stop_tx.send(true);
    });
    move || {
        let mut rx = stop_rx.clone();
        Box::pin(async move {
            let _ = rx.wait_for(|stop| *stop).await;
        })
    }
}

/// Resolves at SIGTERM or SIGINT, marking the process draining.
async fn terminated_then(health: Arc<Health>) {
    terminated().await;
    health.draining.store(true, Ordering::SeqCst);
}

/// Resolves at SIGTERM or SIGINT.
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_header_match_that_is_no_valid_header_refuses_the_path_instead_of_matching_all() {
        let ok = BTreeMap::from([("X-Canary".to_string(), "yes".to_string())]);
        let matches = header_matches(&ok).unwrap();
        assert_eq!(matches[0].0, "x-canary");
        assert_eq!(matches[0].1, "yes");
        let bad_name = BTreeMap::from([("X Canary".to_string(), "yes".to_string())]);
        assert!(header_matches(&bad_name).is_none());
        let bad_value = BTreeMap::from([("X-Canary".to_string(), "a\nb".to_string())]);
        assert!(header_matches(&bad_value).is_none());
        assert_eq!(header_matches(&BTreeMap::new()), Some(Vec::new()));
    }

    #[test]
    fn certificates_that_do_not_load_are_left_out_and_each_host_keeps_its_first() {
        let make = |host: &str| {
            let c = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
            (c.cert.pem(), c.signing_key.serialize_pem())
        };
        let (a_cert, a_key) = make("a.example.com");
        let (b_cert, b_key) = make("b.example.com");
        let entry = |hosts: &[&str], certificate: &str, key: &str| TlsCertificate {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            certificate: certificate.into(),
            key: key.into(),
        };
        let certs = certificates(&[
            entry(&["a.example.com"], &a_cert, &a_key),
            // A key that is not the certificate's: not served.
            entry(&["c.example.com"], &a_cert, &b_key),
            entry(&["a.example.com", "b.example.com"], &b_cert, &b_key),
        ]);
        let mut hosts: Vec<&str> = certs.keys().map(String::as_str).collect();
        hosts.sort_unstable();
        assert_eq!(hosts, ["a.example.com", "b.example.com"]);
        let a = rouse_gateway::certified_key(a_cert.as_bytes(), a_key.as_bytes()).unwrap();
        assert_eq!(certs["a.example.com"].cert, a.cert);
    }
}

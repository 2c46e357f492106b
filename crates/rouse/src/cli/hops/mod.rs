//! `rouse activator` and `rouse gateway` as processes of their own: the same behaviours local
//! mode fuses into one process ([`rouse_activator::Activator`], [`rouse_gateway::Gateway`]),
//! fed by an [`endpoints::EndpointsSource`] (a static file today; the Kubernetes informers
//! later) and talking to each other and to the queue-proxy sidecars over the network.
//!
//! The gateway sends a revision's requests to its pods in Serve mode and to the activators in
//! Proxy mode (as Knative's public Service endpoints do), naming the revision in
//! `Knative-Serving-Namespace` / `Knative-Serving-Revision`; the activator buffers them until
//! one of the revision's pods passes its probe.

pub mod endpoints;

use std::collections::HashSet;
use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use http::{Request, StatusCode};
use hyper::service::service_fn;
use rouse_activator::{Activator, ActivatorConfig, RevisionParams};
use rouse_gateway::{Gateway, Mode, RouteTarget, RoutingTable};
use rouse_queue::PROBE_HEADER;
use rouse_queue::http::{Body, full, text_response};
use tokio::net::TcpListener;

use endpoints::{EndpointsSource, FileSource, SksMode, Topology};

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
    /// when it changes.
    #[arg(long)]
    pub endpoints: PathBuf,
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

fn parse_millis(s: &str) -> Result<Duration, String> {
    let n = s.strip_suffix("ms").unwrap_or(s);
    n.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("{s:?} is not a number of milliseconds (like 100ms)"))
}

/// Runs the activator until SIGTERM.
pub async fn run_activator(args: &HopArgs) -> anyhow::Result<()> {
    let first = FileSource::read(&args.endpoints)?;
    let poke: rouse_activator::Poke = Arc::new(|ns: &str, rev: &str| {
        // No autoscaler connection yet: the wake-up comes from outside (the test, or an
        // operator scaling the Deployment).
        tracing::info!(
            namespace = ns,
            revision = rev,
            "activation: requests wait for an instance"
        );
    });
    let activator = Activator::new(ActivatorConfig::default(), poke);
    let mut known = HashSet::new();
    apply_to_activator(&activator, &first, &mut known);
    let listen = args
        .listen
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 8012)));
    let act = activator.clone();
    let (listener, admin) = bind(listen, args, "activator", move || act.metrics_text()).await?;
    let source = FileSource::new(args.endpoints.clone(), args.poll);
    let act = activator.clone();
    let watcher = tokio::spawn(follow(source, move |t| {
        apply_to_activator(&act, &t, &mut known)
    }));
    let make = |_remote| {
        let activator = activator.clone();
        service_fn(move |req: Request<Body>| {
            let activator = activator.clone();
            async move { Ok::<_, Infallible>(activate(&activator, req).await) }
        })
    };
    // Plain requests are admitted and relayed on the lean fast path; the rest go to `make`.
    let front = Arc::new(rouse_activator::ActivatorFront::new(activator.clone()));
    let limits = rouse_queue::http::ServerLimits::default();
    let stop = terminated_then(admin);
    rouse_queue::http::serve_front(listener, make, front, stop, limits).await;
    watcher.abort();
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

fn apply_to_activator(activator: &Activator, t: &Topology, known: &mut HashSet<(String, String)>) {
    let mut now = HashSet::new();
    for r in &t.revisions {
        let params = RevisionParams {
            container_concurrency: r.container_concurrency,
            timeout: r
                .timeout_seconds
                .map_or(Duration::ZERO, Duration::from_secs),
            h2c: r.h2c,
            ..RevisionParams::default()
        };
        activator.set_revision(&r.namespace, &r.name, params);
        activator.set_backends(&r.namespace, &r.name, r.pods.clone());
        now.insert((r.namespace.clone(), r.name.clone()));
    }
    for (ns, rev) in known.difference(&now) {
        activator.remove_revision(ns, rev);
    }
    *known = now;
}

/// Runs the gateway until SIGTERM.
pub async fn run_gateway(args: &HopArgs) -> anyhow::Result<()> {
    let first = FileSource::read(&args.endpoints)?;
    // Used only while no activator is listed: then the gateway buffers itself.
    let fallback = Activator::new(ActivatorConfig::default(), Arc::new(|_: &str, _: &str| {}));
    let gateway = Gateway::new(fallback);
    let mut known = HashSet::new();
    apply_to_gateway(&gateway, &first, &mut known);
    let listen = args
        .listen
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 8080)));
    let gw = gateway.clone();
    let (listener, admin) = bind(listen, args, "gateway", move || gateway_metrics(&gw)).await?;
    let source = FileSource::new(args.endpoints.clone(), args.poll);
    let gw = gateway.clone();
    let watcher = tokio::spawn(follow(source, move |t| {
        apply_to_gateway(&gw, &t, &mut known)
    }));
    gateway.serve(listener, terminated_then(admin)).await;
    watcher.abort();
    Ok(())
}

fn apply_to_gateway(gateway: &Gateway, t: &Topology, known: &mut HashSet<(String, String)>) {
    let mut now = HashSet::new();
    for r in &t.revisions {
        // Proxy mode: the activators are the revision's endpoints (as on Kubernetes); with
        // none listed, the gateway's own activator takes the requests.
        let (mode, endpoints) = match r.mode {
            SksMode::Serve if !r.pods.is_empty() => (Mode::Serve, r.pods.clone()),
            _ if !t.activators.is_empty() => (Mode::Serve, t.activators.clone()),
            _ => (Mode::Proxy, Vec::new()),
        };
        gateway.set_revision(&r.namespace, &r.name, mode, endpoints, r.h2c);
        now.insert((r.namespace.clone(), r.name.clone()));
    }
    let mut table = RoutingTable::new();
    for route in &t.routes {
        let targets = route
            .targets
            .iter()
            .map(|x| RouteTarget {
                namespace: x.namespace.clone(),
                revision: x.revision.clone(),
                percent: x.percent,
            })
            .collect();
        table.insert(route.host.clone(), targets);
    }
    gateway.set_routes(table);
    for (ns, rev) in known.difference(&now) {
        gateway.remove_revision(ns, rev);
    }
    *known = now;
}

/// Applies every new version of the description; a bad one is reported and the last good one
/// stays in force.
async fn follow<S: EndpointsSource>(mut source: S, mut apply: impl FnMut(Topology) + Send) {
    // The first version was applied before serving; applying it again changes nothing, and
    // a change made since is not missed.
    loop {
        match source.next().await {
            Ok(t) => apply(t),
            Err(e) => tracing::warn!(error = %e, "endpoints not updated"),
        }
    }
}

fn gateway_metrics(gateway: &Gateway) -> String {
    format!(
        "# HELP rouse_gateway_requests_in_flight Requests in the gateway now.\n\
         # TYPE rouse_gateway_requests_in_flight gauge\n\
         rouse_gateway_requests_in_flight {}\n",
        gateway.in_flight()
    )
}

/// Whether the process is draining (SIGTERM came): health checks answer 503 from then on.
type Draining = Arc<std::sync::atomic::AtomicBool>;

/// Binds the serving listener and the admin and metrics ports (health checks and `metrics`
/// on both), and prints one line with the addresses.
async fn bind(
    listen: SocketAddr,
    args: &HopArgs,
    what: &str,
    metrics: impl Fn() -> String + Send + Sync + 'static,
) -> anyhow::Result<(TcpListener, Draining)> {
    let bind_one = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))
    };
    let l = bind_one(listen).await?;
    let admin = bind_one(args.admin).await?;
    let metrics_port = bind_one(args.metrics).await?;
    println!(
        "rouse {what}: listening={} admin={} metrics={}",
        l.local_addr()?,
        admin.local_addr()?,
        metrics_port.local_addr()?
    );
    let _ = std::io::stdout().flush();
    let draining = Draining::default();
    let metrics: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(metrics);
    for port in [admin, metrics_port] {
        tokio::spawn(serve_admin(port, draining.clone(), metrics.clone()));
    }
    Ok((l, draining))
}

async fn serve_admin(
    listener: TcpListener,
    draining: Draining,
    metrics: Arc<dyn Fn() -> String + Send + Sync>,
) {
    let make = |_remote| {
        let draining = draining.clone();
        let metrics = metrics.clone();
        service_fn(move |req: Request<Body>| {
            let resp = match req.uri().path() {
                "/healthz" | "/readyz" if draining.load(std::sync::atomic::Ordering::SeqCst) => {
                    text_response(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
                }
                "/healthz" | "/readyz" => text_response(StatusCode::OK, "ok"),
                "/metrics" => text_response(StatusCode::OK, metrics()),
                _ => text_response(StatusCode::NOT_FOUND, "not found"),
            };
            async move { Ok::<_, Infallible>(resp) }
        })
    };
    rouse_queue::http::serve(listener, make, std::future::pending()).await;
}

/// Resolves at SIGTERM or SIGINT, marking the process draining.
async fn terminated_then(draining: Draining) {
    terminated().await;
    draining.store(true, std::sync::atomic::Ordering::SeqCst);
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

//! The queue-proxy: one in front of each app instance.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::http::{Body, GuardedBody, ProxyClient, boxed, full, strip_internal, text_response};
use crate::inflight::InFlight;
use crate::probe::{ProbeSpec, Prober};

/// The header a health check carries; value `queue` asks whether this queue-proxy's app is ready.
pub const PROBE_HEADER: HeaderName = HeaderName::from_static("k-network-probe");
/// The body of a successful queue-proxy health check.
pub const PROBE_OK_BODY: &str = "queue";
/// The header a proxy hop moves the client's Host into; the queue-proxy restores it.
pub const ORIGINAL_HOST_HEADER: HeaderName = HeaderName::from_static("k-original-host");

/// What a queue-proxy needs to know about its instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Where the app listens (`127.0.0.1:<PORT>`).
    pub app_addr: SocketAddr,
    /// Speak HTTP/2 cleartext to the app.
    pub h2c: bool,
    /// Requests the app takes at once; 0 means unlimited. Counted now, enforced later.
    pub container_concurrency: u32,
    /// How to tell the app is ready.
    pub readiness: ProbeSpec,
    /// The revision this instance belongs to.
    pub revision: String,
    /// The revision's namespace.
    pub namespace: String,
}

/// A running queue-proxy: reverse-proxies to the app with streaming bodies, counts requests in
/// flight, probes the app's readiness and answers health checks (`K-Network-Probe: queue`).
/// Dropping it stops everything at once; [`QueueProxy::drain`] stops gracefully.
pub struct QueueProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    server: Mutex<Option<JoinHandle<()>>>,
    prober: JoinHandle<()>,
}

struct Shared {
    cfg: QueueConfig,
    client: ProxyClient,
    in_flight: InFlight,
    ready: watch::Sender<bool>,
    draining: AtomicBool,
    /// `Some(n)` while the app's n-th run is up, `None` while it is down.
    app_run: watch::Sender<Option<u64>>,
}

impl QueueProxy {
    /// Starts a queue-proxy on `127.0.0.1:0` and begins probing the app (as if it had just
    /// started).
    pub async fn start(cfg: QueueConfig) -> std::io::Result<QueueProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        Self::with_listener(cfg, listener)
    }

    /// Like [`QueueProxy::start`], on a listener the caller bound (so its address can be known
    /// before the queue-proxy runs). Must be called inside a Tokio runtime.
    pub fn with_listener(cfg: QueueConfig, listener: TcpListener) -> std::io::Result<QueueProxy> {
        let addr = listener.local_addr()?;
        let (ready, _) = watch::channel(false);
        let (app_run, app_rx) = watch::channel(Some(0));
        let client = if cfg.h2c {
            ProxyClient::h2c()
        } else {
            ProxyClient::http1()
        };
        let shared = Arc::new(Shared {
            cfg,
            client,
            in_flight: InFlight::new(),
            ready,
            draining: AtomicBool::new(false),
            app_run,
        });
        let (stop, stop_rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, shared.clone(), stop_rx));
        let prober = tokio::spawn(probe_loop(shared.clone(), app_rx));
        Ok(QueueProxy {
            addr,
            shared,
            stop,
            server: Mutex::new(Some(server)),
            prober,
        })
    }

    /// The address clients (gateway, activator) send requests to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &QueueConfig {
        &self.shared.cfg
    }

    /// Whether the app passes readiness, as it changes.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.shared.ready.subscribe()
    }

    /// Whether the app passes readiness now.
    pub fn is_ready(&self) -> bool {
        *self.shared.ready.borrow()
    }

    /// Requests being proxied now (until their response bodies finish).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.get()
    }

    /// Tells the queue-proxy the app (re)started: readiness drops to false and probing starts
    /// over (initial delay, then aggressive).
    pub fn app_started(&self) {
        self.shared.ready.send_replace(false);
        self.shared
            .app_run
            .send_modify(|r| *r = Some(r.map_or(1, |n| n + 1)));
    }

    /// Tells the queue-proxy the app stopped: readiness drops to false and probing pauses
    /// until [`QueueProxy::app_started`].
    pub fn app_stopped(&self) {
        self.shared.ready.send_replace(false);
        self.shared.app_run.send_replace(None);
    }

    /// Drains: health checks fail from now on, requests in flight get up to `timeout` to
    /// finish (new ones are still served meanwhile), then it stops accepting and closes its
    /// connections. Requests still running at the deadline are cut off.
    pub async fn drain(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        self.shared.draining.store(true, Ordering::SeqCst);
        self.shared.in_flight.wait_idle(timeout).await;
        let _ = self.stop.send(true);
        let server = self.server.lock().expect("server lock").take();
        if let Some(mut server) = server {
            // Idle connections close at once; give a request that raced in a moment to end.
            let until = deadline.max(Instant::now() + Duration::from_millis(100));
            if tokio::time::timeout_at(until, &mut server).await.is_err() {
                server.abort();
            }
        }
    }

    /// Whether [`QueueProxy::drain`] has begun.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::SeqCst)
    }
}

impl Drop for QueueProxy {
    fn drop(&mut self) {
        if let Some(server) = self.server.lock().map(|mut s| s.take()).ok().flatten() {
            server.abort();
        }
        self.prober.abort();
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let make = |_remote| {
        let shared = shared.clone();
        service_fn(move |req| handle(shared.clone(), req))
    };
    crate::http::serve(listener, make, async move {
        let _ = stop.wait_for(|s| *s).await;
    })
    .await;
}

async fn probe_loop(shared: Arc<Shared>, mut app_run: watch::Receiver<Option<u64>>) {
    let cfg = &shared.cfg;
    let prober = Prober::new(cfg.readiness.clone(), cfg.app_addr, cfg.h2c);
    loop {
        let running = app_run.borrow_and_update().is_some();
        if running {
            tokio::select! {
                _ = prober.run(&shared.ready) => {}
                changed = app_run.changed() => if changed.is_err() { return },
            }
        } else {
            shared
                .ready
                .send_if_modified(|r| std::mem::replace(r, false));
            if app_run.changed().await.is_err() {
                return;
            }
        }
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if let Some(probe) = req.headers().get(&PROBE_HEADER) {
        return Ok(shared.health(probe));
    }
    let guard = shared.in_flight.start();
    let (mut parts, body) = req.into_parts();
    if let Some(host) = parts.headers.remove(&ORIGINAL_HOST_HEADER) {
        parts.headers.insert(header::HOST, host);
    }
    strip_internal(&mut parts.headers);
    let req = Request::from_parts(parts, boxed(body));
    match shared.client.forward(req, shared.cfg.app_addr).await {
        Ok(resp) => Ok(resp.map(|b| boxed(GuardedBody::new(b, guard)))),
        Err(e) => {
            tracing::warn!(
                revision = %shared.cfg.revision,
                namespace = %shared.cfg.namespace,
                error = %e,
                "proxying to the app failed"
            );
            Ok(e.to_response())
        }
    }
}

impl Shared {
    fn health(&self, probe: &HeaderValue) -> Response<Body> {
        if probe != PROBE_OK_BODY {
            return text_response(
                StatusCode::BAD_REQUEST,
                format!("unexpected probe header value {probe:?}"),
            );
        }
        if self.draining.load(Ordering::SeqCst) {
            return text_response(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        }
        if !*self.ready.borrow() {
            return text_response(StatusCode::SERVICE_UNAVAILABLE, "app not ready");
        }
        let mut resp = Response::new(full(PROBE_OK_BODY));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
}

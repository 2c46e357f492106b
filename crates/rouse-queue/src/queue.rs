//! The queue-proxy: one in front of each app instance.

use foldhash::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock, Weak};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use rouse_http::h1::FastRequest;
use rouse_http::raw::{self, RawError};
use rouse_http::timeout::{Deadlines, timeout_response, until};
use rouse_http::{
    Body, BodyRefused, BoxError, DEFAULT_REQUEST_BODY_BUFFER, FastDest, FastRoute, ForwardError,
    FrontRouter, GuardedBody, ORIGINAL_HOST_HEADER, PROBE_AGENT_PREFIXES, PROBE_HEADER,
    PROXY_ACTIVATOR, PROXY_HEADER, ProxyClient, ProxyError, Route, ServerLimits, UpstreamPool,
    boxed, buffer_body, forward_retryable, full, is_upgrade, settle_request, strip_internal,
    strip_underscored, text_response,
};

use crate::breaker::{Breaker, QUEUE_DEPTH_PER_SLOT};
use crate::inflight::InFlight;
use crate::probe::{CommandRunner, HostCommand, ProbeSpec, Prober};
use crate::request_log::{PeerAddr, RequestLogger};
use crate::stats::{QueueStats, Stats};

/// The body of a successful queue-proxy health check.
pub const PROBE_OK_BODY: &str = "queue";
/// The body of the 503 a request gets when the app's slots and the queue are full.
pub const QUEUE_FULL_BODY: &str = "pending request queue full";

/// What a queue-proxy needs to know about its instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Where the app listens (`127.0.0.1:<PORT>`).
    pub app_addr: SocketAddr,
    /// Speak HTTP/2 cleartext to the app.
    pub h2c: bool,
    /// Requests the app takes at once (`containerConcurrency`); 0 means unlimited. Beyond it
    /// up to 10 × as many wait in arrival order; more get a 503 at once.
    pub container_concurrency: u32,
    /// How to tell the app is ready.
    pub readiness: ProbeSpec,
    /// The revision this instance belongs to.
    pub revision: String,
    /// The revision's namespace.
    pub namespace: String,
    /// The longest a request may take, from arrival to the end of its response
    /// (`timeoutSeconds`); `None` means no limit.
    pub timeout: Option<Duration>,
    /// The longest from arrival to the app's response head (`responseStartTimeoutSeconds`);
    /// `None` means no limit.
    pub response_start_timeout: Option<Duration>,
    /// The longest the app may stay silent, before its head or between body chunks
    /// (`idleTimeoutSeconds`); `None` means no limit.
    pub idle_timeout: Option<Duration>,
    /// Request bodies of up to this many bytes are received whole before the request takes
    /// a concurrency slot or an app connection (larger ones stream); 0 switches it off. Never
    /// for an h2c app (streaming RPCs).
    pub request_body_buffer: u64,
    /// Where requests are logged, when `config-observability` asks for it.
    pub request_log: Option<Arc<RequestLogger>>,
}

impl QueueConfig {
    /// The timers of a request arriving now.
    pub(crate) fn deadlines(&self) -> Deadlines {
        Deadlines::new(
            Instant::now(),
            self.timeout,
            self.response_start_timeout,
            self.idle_timeout,
        )
    }

    /// A configuration for the app at `app_addr` with no concurrency limit, no timeouts,
    /// HTTP/1.1 and a TCP readiness probe; set the rest with struct update syntax.
    pub fn new(
        app_addr: SocketAddr,
        namespace: impl Into<String>,
        revision: impl Into<String>,
    ) -> Self {
        QueueConfig {
            app_addr,
            h2c: false,
            container_concurrency: 0,
            readiness: ProbeSpec::default(),
            revision: revision.into(),
            namespace: namespace.into(),
            timeout: None,
            response_start_timeout: None,
            idle_timeout: None,
            request_body_buffer: DEFAULT_REQUEST_BODY_BUFFER,
            request_log: None,
        }
    }
}

/// A running queue-proxy: reverse-proxies to the app with streaming bodies, holds requests
/// to the app's containerConcurrency, enforces the revision's timeouts, reports load (see
/// [`QueueProxy::take_stats`]), probes the app's readiness and answers health checks
/// (`K-Network-Probe: queue`, which bypass the concurrency limit and the load report).
/// Dropping it stops everything at once; [`QueueProxy::drain`] stops gracefully.
pub struct QueueProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    /// The accept loops, one per listener.
    servers: Mutex<Vec<JoinHandle<()>>>,
    prober: JoinHandle<()>,
}

pub(crate) struct Shared {
    pub(crate) cfg: QueueConfig,
    client: ProxyClient,
    /// Raw connections to the app for the fast path.
    pub(crate) fast_pool: Arc<UpstreamPool>,
    pub(crate) in_flight: InFlight,
    pub(crate) stats: Stats,
    /// `None` when containerConcurrency is 0 (unlimited).
    pub(crate) breaker: Option<Arc<Breaker>>,
    ready: watch::Sender<bool>,
    draining: AtomicBool,
    /// Becomes true when the queue-proxy stops accepting (end of drain); closed when dropped.
    stop: watch::Receiver<bool>,
    /// `Some(n)` while the app's n-th run is up, `None` while it is down.
    app_run: watch::Sender<Option<u64>>,
    /// Where an exec readiness probe's command runs.
    runner: Arc<dyn CommandRunner>,
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
        Self::with_listener_and_runner(cfg, listener, Arc::new(HostCommand))
    }

    /// Like [`QueueProxy::with_listener`], an exec readiness probe's command run by `runner`
    /// (e.g. inside the app's container) rather than as a process on this machine.
    pub fn with_listener_and_runner(
        cfg: QueueConfig,
        listener: TcpListener,
        runner: Arc<dyn CommandRunner>,
    ) -> std::io::Result<QueueProxy> {
        let addr = listener.local_addr()?;
        let (ready, _) = watch::channel(false);
        let (app_run, app_rx) = watch::channel(Some(0));
        let client = if cfg.h2c {
            ProxyClient::h2c()
        } else {
            ProxyClient::http1()
        };
        let cc = cfg.container_concurrency as usize;
        let breaker = (cc > 0).then(|| Breaker::new(cc, cc * QUEUE_DEPTH_PER_SLOT));
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            stop: stop_rx.clone(),
            fast_pool: Arc::new(UpstreamPool::new(cfg.app_addr)),
            cfg,
            client,
            in_flight: InFlight::new(),
            stats: Stats::new(),
            breaker,
            ready,
            draining: AtomicBool::new(false),
            app_run,
            runner,
        });
        let server = tokio::spawn(serve(listener, shared.clone(), stop_rx));
        let prober = tokio::spawn(probe_loop(shared.clone(), app_rx));
        register(addr, &shared);
        Ok(QueueProxy {
            addr,
            shared,
            stop,
            servers: Mutex::new(vec![server]),
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

    /// Requests being handled now, from arrival (including time queued) until their response
    /// bodies finish.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.get()
    }

    /// Requests waiting for a slot in the app (always 0 without a concurrency limit).
    pub fn queued(&self) -> usize {
        self.shared.breaker.as_ref().map_or(0, |b| b.waiting())
    }

    /// The load report since the previous call (or since the start), for the autoscaler; each
    /// call starts a new period. Meant to be called about once a second by one scraper.
    pub fn take_stats(&self) -> QueueStats {
        self.shared.stats.take()
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

    /// Drains: health checks fail from now on, requests in flight (queued ones, streaming
    /// responses and upgraded connections included) get up to `timeout` to finish (new ones
    /// are still served meanwhile), then it stops accepting and closes its connections.
    /// Requests still running at the deadline are cut off.
    pub async fn drain(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        self.shared.draining.store(true, Ordering::SeqCst);
        self.shared.in_flight.wait_idle(timeout).await;
        let _ = self.stop.send(true);
        unregister(self.addr, &self.shared);
        let servers = std::mem::take(&mut *self.servers.lock().expect("server lock"));
        // Idle connections close at once; give a request that raced in a moment to end.
        let until = deadline.max(Instant::now() + Duration::from_millis(100));
        for mut server in servers {
            if tokio::time::timeout_at(until, &mut server).await.is_err() {
                server.abort();
            }
        }
    }

    /// Serves on one more listener as well (the sidecar's h2c port beside its HTTP port):
    /// the same handling, load report and drain. Must be called inside a Tokio runtime.
    pub fn serve_also(&self, listener: TcpListener) {
        let stop = self.shared.stop.clone();
        let server = tokio::spawn(serve(listener, self.shared.clone(), stop));
        if let Ok(mut servers) = self.servers.lock() {
            servers.push(server);
        }
    }

    /// Health checks fail from now on (the drain's quiet period: the load balancers take the
    /// instance out) while requests are still served; [`QueueProxy::drain`] follows.
    pub fn begin_drain(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
    }

    /// Requests (not health checks) that arrived since the start: the drain's quiet period
    /// ends when it stops moving.
    pub fn requests_started(&self) -> u64 {
        self.shared.in_flight.started()
    }

    /// Frees what the idle connections to the app hold beyond the connections themselves
    /// (their read buffers), for a queue-proxy gone idle: they come back with the next request.
    pub fn release_idle_buffers(&self) {
        self.shared.fast_pool.release_idle_buffers();
    }

    /// Whether [`QueueProxy::drain`] has begun.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::SeqCst)
    }
}

impl Drop for QueueProxy {
    fn drop(&mut self) {
        unregister(self.addr, &self.shared);
        if let Ok(mut servers) = self.servers.lock() {
            for server in servers.drain(..) {
                server.abort();
            }
        }
        self.prober.abort();
    }
}

/// The queue-proxies of this process that accept requests, by address: a proxy hop in the
/// same process hands requests to them directly instead of over loopback TCP.
static LOCAL: LazyLock<RwLock<HashMap<SocketAddr, Weak<Shared>>>> = LazyLock::new(Default::default);

fn register(addr: SocketAddr, shared: &Arc<Shared>) {
    if let Ok(mut map) = LOCAL.write() {
        map.insert(addr, Arc::downgrade(shared));
    }
}

fn unregister(addr: SocketAddr, shared: &Arc<Shared>) {
    if let Ok(mut map) = LOCAL.write()
        && map
            .get(&addr)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(shared)))
    {
        map.remove(&addr);
    }
}

/// A queue-proxy of this process, reached without a socket: the same handling (health checks,
/// concurrency limit and queue, timeouts, load report, drain) as a request that arrived at its
/// address, minus the serializing, parsing and syscalls of a loopback hop.
#[derive(Clone)]
pub struct LocalQueue(pub(crate) Arc<Shared>);

impl LocalQueue {
    /// The queue-proxy listening at `addr` in this process, while it accepts requests (not
    /// after its drain stopped it, nor once dropped); `None` means: use TCP.
    pub fn lookup(addr: SocketAddr) -> Option<LocalQueue> {
        let map = LOCAL.read().ok()?;
        let shared = map.get(&addr)?.upgrade()?;
        let stopped = *shared.stop.borrow();
        (!stopped).then_some(LocalQueue(shared))
    }

    /// Handles `req` as if it had arrived at the queue-proxy's address. The request must not
    /// ask for a protocol switch (send those over TCP, which carries the connection).
    pub async fn handle(&self, req: Request<Body>) -> Response<Body> {
        match handle(self.0.clone(), req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        }
    }

    /// Whether the app passes readiness, as it changes (a hint to probe now; not a verdict).
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.0.ready.subscribe()
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let make = |remote| {
        let shared = shared.clone();
        service_fn(move |mut req: Request<Body>| {
            let shared = shared.clone();
            async move {
                if shared.cfg.request_log.as_ref().is_some_and(|l| l.is_on()) {
                    req.extensions_mut().insert(PeerAddr(remote));
                }
                // The kubelet's, activator's or autoscaler's probe without the probe header:
                // refused, as Knative's queue-proxy does (it never reaches the app). Only on
                // the socket: in-process hand-overs come from this process's own hops.
                if is_probe_agent(req.headers()) && !req.headers().contains_key(&PROBE_HEADER) {
                    return Ok(shared.health(&HeaderValue::from_static("")));
                }
                handle(shared, req).await
            }
        })
    };
    // Plain HTTP/1.1 requests to an HTTP/1.1 app go the fast way, straight from the socket's
    // bytes (as the gateway's do in local mode); everything else the general way.
    let front = Arc::new(SidecarFront(LocalQueue(shared.clone())));
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    rouse_http::serve_front(listener, make, front, shutdown, ServerLimits::default()).await;
}

/// The fast path of a queue-proxy's own listener: every plain request is its own, unless the
/// app speaks h2c. Not the edge: the forwarding headers are the gateway's.
struct SidecarFront(LocalQueue);

impl FrontRouter for SidecarFront {
    type Local = LocalQueue;
    type Hold = ();
    type Wait = ();
    type Expiry = ();

    fn route(&self, _req: &FastRequest<'_>) -> Route<(), (), LocalQueue> {
        if self.0.0.cfg.h2c {
            return Route::General;
        }
        Route::Go(FastRoute {
            dest: FastDest::Local(self.0.clone()),
            hold: (),
            proxied: false,
            extra_request_headers: bytes::Bytes::new(),
            extra_response_headers: Vec::new(),
        })
    }

    async fn wait(&self, _wait: ()) -> Route<(), (), LocalQueue> {
        Route::General
    }

    fn deadline(&self, _wait: &()) -> Option<(Instant, ())> {
        None
    }

    fn expired(&self, _expiry: ()) -> Route<(), (), LocalQueue> {
        Route::General
    }

    fn is_edge(&self) -> bool {
        false
    }
}

async fn probe_loop(shared: Arc<Shared>, mut app_run: watch::Receiver<Option<u64>>) {
    let cfg = &shared.cfg;
    let prober = Prober::new(
        cfg.readiness.clone(),
        cfg.app_addr,
        cfg.h2c,
        shared.runner.clone(),
    );
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

/// Handles one request, logged when `config-observability` asks for it.
async fn handle(shared: Arc<Shared>, req: Request<Body>) -> Result<Response<Body>, Infallible> {
    let entry = shared.cfg.request_log.as_ref().and_then(|log| {
        let probe = req.headers().contains_key(&PROBE_HEADER);
        log.begin(&req, probe)
    });
    let resp = handle_request(shared, req).await?;
    Ok(match entry {
        Some(entry) => entry.wrap(resp),
        None => resp,
    })
}

async fn handle_request(
    shared: Arc<Shared>,
    mut req: Request<Body>,
) -> Result<Response<Body>, Infallible> {
    if let Some(probe) = req.headers().get(&PROBE_HEADER) {
        return Ok(shared.health(probe));
    }
    if let Err(e) = settle_request(&mut req) {
        return Ok(text_response(StatusCode::BAD_REQUEST, e.to_string()));
    }
    strip_underscored(req.headers_mut());
    let cfg = &shared.cfg;
    let deadlines = cfg.deadlines();
    let proxied = req
        .headers()
        .get(&PROXY_HEADER)
        .is_some_and(|v| v == PROXY_ACTIVATOR);
    // Held until the response body ends or is dropped: the end of drain.
    let in_flight = shared.in_flight.start();
    // The body first, whole when small: a slow upload holds no slot, no app connection and
    // counts as no load.
    let buffer = if cfg.h2c { 0 } else { cfg.request_body_buffer };
    if buffer > 0 && !http_body::Body::is_end_stream(req.body()) && !is_upgrade(&req) {
        let (parts, body) = req.into_parts();
        let received = until(deadlines.head(), buffer_body(body, buffer)).await;
        let body = match received {
            None => return Ok(timeout_response()),
            Some(Ok(body)) => body,
            Some(Err(BodyRefused::TooSlow(e))) => {
                return Ok(text_response(StatusCode::REQUEST_TIMEOUT, e.to_string()));
            }
            Some(Err(e @ BodyRefused::Malformed(_))) => {
                return Ok(text_response(StatusCode::BAD_REQUEST, e.to_string()));
            }
        };
        req = Request::from_parts(parts, body);
    }
    // Held until the response body ends or is dropped: the "out" event.
    let stats = shared.stats.start(proxied);
    let slot = match &shared.breaker {
        None => None,
        Some(breaker) => {
            let Ok(place) = breaker.reserve() else {
                return Ok(text_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    QUEUE_FULL_BODY,
                ));
            };
            match until(deadlines.head(), place.acquire()).await {
                Some(slot) => Some(slot),
                None => return Ok(timeout_response()),
            }
        }
    };
    let (mut parts, body) = req.into_parts();
    if let Some(host) = parts.headers.remove(&ORIGINAL_HOST_HEADER) {
        parts.headers.insert(header::HOST, host);
    }
    strip_internal(&mut parts.headers);
    let mut req = Request::from_parts(parts, body);
    let held = (stats, in_flight, slot);
    if is_upgrade(&req) {
        return Ok(Box::pin(upgrade(&shared, req, deadlines, held)).await);
    }
    if !shared.cfg.h2c && raw::eligible(&req) {
        let (mut parts, body) = req.into_parts();
        let sent = raw::send(&shared.fast_pool, &mut parts, shared.cfg.app_addr);
        let resend = match until(deadlines.head(), sent).await {
            None => return Ok(timeout_response()),
            Some(Ok(resp)) => return Ok(respond(resp, &deadlines, held)),
            // Not sent: the pooled client takes it, with its wait for a restarting app.
            Some(Err(RawError::Refused(_))) => false,
            // The app died with it (a crash on this very request, say): as the pooled client
            // would, a request safe to repeat waits for the restarted app and goes once more.
            Some(Err(RawError::Unanswered(_)))
                if *shared.app_run.borrow() != Some(0) && is_idempotent(&parts.method) =>
            {
                true
            }
            Some(Err(e)) => {
                let text = format!("upstream {} failed: {e}", shared.cfg.app_addr);
                log_failure(&shared, &text);
                return Ok(text_response(StatusCode::BAD_GATEWAY, text));
            }
        };
        req = Request::from_parts(parts, body);
        if resend {
            let resent = Box::pin(forward_to_app(&shared, req, true));
            return Ok(match until(deadlines.head(), resent).await {
                None => timeout_response(),
                Some(Ok(resp)) => respond(resp, &deadlines, held),
                Some(Err(e)) => {
                    log_failure(&shared, &e);
                    e.to_response()
                }
            });
        }
    }
    // Boxed: the pooled client's future is large, and every request's future would carry it.
    let forwarded = Box::pin(forward_to_app(&shared, req, false));
    Ok(match until(deadlines.head(), forwarded).await {
        None => timeout_response(),
        Some(Ok(resp)) => respond(resp, &deadlines, held),
        Some(Err(e)) => {
            log_failure(&shared, &e);
            e.to_response()
        }
    })
}

/// The app's response for the client, holding `held` (and under the revision's body
/// timeouts) until its body ends.
fn respond<B, H>(resp: Response<B>, deadlines: &Deadlines, held: H) -> Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    H: Send + 'static,
{
    if deadlines.limits_body() {
        resp.map(|b| boxed(GuardedBody::new(deadlines.body(b), held)))
    } else {
        resp.map(|b| boxed(GuardedBody::new(b, held)))
    }
}

fn log_failure(shared: &Shared, error: &dyn std::fmt::Display) {
    tracing::warn!(
        revision = %shared.cfg.revision,
        namespace = %shared.cfg.namespace,
        error = %error,
        "proxying to the app failed"
    );
}

/// Pause between connection attempts while the app is (re)starting.
const APP_RETRY_INTERVAL: Duration = Duration::from_millis(50);

/// Forwards to the app. When the app is not listening (it crashed and the runtime is
/// restarting it), nothing of the request was sent, so it waits for the app to be ready again
/// and retries:
/// a crash costs the request the app was handling, not the ones queued behind it. The
/// caller's deadline bounds the wait.
async fn forward_to_app(
    shared: &Shared,
    mut req: Request<Body>,
    already_sent: bool,
) -> Result<Response<Incoming>, ProxyError> {
    let mut ready = shared.ready.subscribe();
    let mut resent = already_sent;
    if already_sent {
        // Sent once to an app that died with it: wait for it to be back first.
        tokio::time::sleep(APP_RETRY_INTERVAL).await;
        let _ = ready.wait_for(|r| *r).await;
    }
    loop {
        match forward_retryable(&shared.client, req, shared.cfg.app_addr).await {
            Ok(resp) => return Ok(resp),
            Err(ForwardError::Failed(e)) => return Err(e),
            // The app died with the request head possibly delivered (a dead keep-alive
            // connection, or a crash on this very request): an idempotent request is sent
            // once more, as HTTP clients do; anything else fails.
            Err(ForwardError::Unanswered(back, e)) => {
                if resent || *shared.app_run.borrow() == Some(0) || !is_idempotent(back.method()) {
                    return Err(e);
                }
                resent = true;
                req = *back;
                tokio::time::sleep(APP_RETRY_INTERVAL).await;
                let _ = ready.wait_for(|r| *r).await;
            }
            // Only a runtime-managed app comes back by itself; otherwise fail fast (502).
            Err(ForwardError::Retry(_, e)) if *shared.app_run.borrow() == Some(0) => return Err(e),
            Err(ForwardError::Retry(back, _)) => {
                req = *back;
                tokio::time::sleep(APP_RETRY_INTERVAL).await;
                // Closed only when the queue-proxy itself is gone; then try once more.
                let _ = ready.wait_for(|r| *r).await;
            }
        }
    }
}

/// Whether a request is a health check by its agent: the kubelet (`kube-probe/...` or a
/// `K-Kubelet-Probe` header), the activator or the autoscaler.
fn is_probe_agent(headers: &http::HeaderMap) -> bool {
    // A constant name: a string would be parsed on every request.
    const KUBELET_PROBE: http::HeaderName = http::HeaderName::from_static("k-kubelet-probe");
    if headers.contains_key(KUBELET_PROBE) {
        return true;
    }
    headers
        .get(header::USER_AGENT)
        .and_then(|ua| ua.to_str().ok())
        .is_some_and(|ua| PROBE_AGENT_PREFIXES.iter().any(|p| ua.starts_with(p)))
}

fn is_idempotent(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS | http::Method::TRACE
    )
}

/// Forwards a protocol switch (WebSocket, say). Once switched, the connection counts as a
/// request in flight (load, drain, its concurrency slot) until either side closes it or the
/// queue-proxy stops; the revision's timeouts apply only until the switch, as in Knative.
async fn upgrade<H: Send + 'static>(
    shared: &Shared,
    req: Request<Body>,
    deadlines: Deadlines,
    held: H,
) -> Response<Body> {
    let forwarded = shared.client.forward_upgrade(req, shared.cfg.app_addr);
    let Some(forwarded) = until(deadlines.head(), forwarded).await else {
        return timeout_response();
    };
    match forwarded {
        Ok((resp, Some(tunnel))) => {
            let mut stop = shared.stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    res = tunnel.run() => {
                        if let Err(e) = res {
                            tracing::debug!(error = %e, "upgraded connection ended with an error");
                        }
                    }
                    // Stopped (or gone): cut the connection.
                    _ = stop.wait_for(|s| *s) => {}
                }
                drop(held);
            });
            resp.map(boxed)
        }
        Ok((resp, None)) => resp.map(|b| boxed(GuardedBody::new(b, held))),
        Err(e) => {
            tracing::warn!(
                revision = %shared.cfg.revision,
                namespace = %shared.cfg.namespace,
                error = %e,
                "proxying an upgrade to the app failed"
            );
            e.to_response()
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

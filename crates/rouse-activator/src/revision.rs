//! One revision in the activator: its backends (probed by the activator itself), the FIFO of
//! waiting requests, the throttle that releases them up to each backend's free capacity, and
//! its load statistics and counters.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use rouse_http::ORIGINAL_HOST_HEADER;
use rouse_http::{
    Body, BodyRefused, GuardedBody, ProxyClient, RemoteHop, Tunnel, boxed, buffer_body,
    forward_to_hop, is_upgrade, strip_internal, text_response,
};
use rouse_queue::LocalQueue;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::{ActivatorConfig, ActivatorStat, Poke, RevisionParams};
use crate::forward::{DeadlineBody, ForwardError, forward_upgrade_retryable, spawn_tunnel};
use crate::lb::{Candidate, Policy};
use crate::metrics::Histogram;
use crate::probe::probe_queue;

/// Response header on requests that waited for an activation: the wait in milliseconds.
pub const COLD_START_HEADER: HeaderName = HeaderName::from_static("k-cold-start");
/// Request header marking a request as proxied by the activator (the queue-proxy counts it).
pub const PROXY_REQUEST_HEADER: HeaderName = HeaderName::from_static("k-proxy-request");
/// The body of the 503 a request gets when its wait for capacity outlives its deadline
/// (Knative's activator answers its throttler's `context deadline exceeded` error text).
pub const WAIT_EXPIRED_TEXT: &str = "activator request timeout: context deadline exceeded";

/// Backend identities, unique for the process, so a slot released after its backend was
/// removed and re-added under the same address cannot free the newcomer's capacity.
static NEXT_BACKEND_ID: AtomicU64 = AtomicU64::new(1);

/// What every revision shares with the activator.
pub(crate) struct Shared {
    pub cfg: ActivatorConfig,
    /// `cfg.queue_depth` as it is now: the config may change it while requests wait.
    pub queue_depth: AtomicUsize,
    pub poke: Poke,
    /// Forwards to HTTP/1.1 revisions.
    pub client: ProxyClient,
    /// Forwards to h2c revisions ([`RevisionParams::h2c`]).
    pub h2c_client: ProxyClient,
    pub probe_client: ProxyClient,
    pub cold_starts: Mutex<Histogram>,
    /// The runtime the activator was made in: probes run there, whichever thread (a
    /// controller's, say) tells it of new backends.
    pub handle: tokio::runtime::Handle,
}

/// One revision's state in the activator.
pub(crate) struct Revision {
    pub namespace: String,
    pub name: String,
    shared: Arc<Shared>,
    state: Mutex<State>,
}

struct Backend {
    id: u64,
    /// Its address, and kept-alive raw connections to it (another process's queue-proxy)
    /// for the fast path and the general path's bodiless requests; dropped with it.
    hop: Arc<RemoteHop>,
    /// Passed the activator's probe and has not failed a connection since.
    healthy: bool,
    /// A probe loop runs for it.
    probing: bool,
    in_flight: u32,
}

impl Candidate for Backend {
    fn healthy(&self) -> bool {
        self.healthy
    }
    fn in_flight(&self) -> u32 {
        self.in_flight
    }
}

/// A waiting request's go-ahead: the backend it may use (one slot of it is now its own).
#[derive(Debug)]
struct Assignment {
    backend: u64,
    hop: Arc<RemoteHop>,
}

struct State {
    params: RevisionParams,
    policy: Policy,
    /// In address order (the order first-available scans).
    backends: Vec<Backend>,
    rr_next: usize,
    /// Waiting requests by arrival number: FIFO order, removal by id when one leaves.
    waiters: BTreeMap<u64, oneshot::Sender<Assignment>>,
    next_waiter: u64,
    /// An activation (poke) is under way; re-armed when the revision loses its last ready
    /// backend, or when nobody waits any more and none ever became ready.
    activating: bool,
    activation_started: Option<Instant>,
    /// Why the revision cannot be scaled up (a limit on instances), while it cannot: with no
    /// ready backend its requests are answered 503 with this at once instead of waiting.
    refusal: Option<String>,
    stats: Stats,
    counters: Counters,
}

/// Time-weighted concurrency and arrivals since the last report.
struct Stats {
    concurrency: usize,
    last_change: Instant,
    area: f64,
    period_start: Instant,
    requests: u64,
}

impl Stats {
    fn new(now: Instant) -> Self {
        Stats {
            concurrency: 0,
            last_change: now,
            area: 0.0,
            period_start: now,
            requests: 0,
        }
    }

    fn flush(&mut self, now: Instant) {
        let dt = now
            .saturating_duration_since(self.last_change)
            .as_secs_f64();
        self.area += self.concurrency as f64 * dt;
        self.last_change = now;
    }

    fn arrive(&mut self, now: Instant) {
        self.flush(now);
        self.concurrency += 1;
        self.requests += 1;
    }

    fn leave(&mut self, now: Instant) {
        self.flush(now);
        self.concurrency = self.concurrency.saturating_sub(1);
    }
}

/// Counters behind the Prometheus metrics.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counters {
    pub activations: u64,
    pub overflows: u64,
    pub timeouts: u64,
    pub responses: BTreeMap<u16, u64>,
}

/// A snapshot for the metrics text.
pub(crate) struct Snapshot {
    pub counters: Counters,
    pub waiting: usize,
}

impl State {
    fn healthy_count(&self) -> usize {
        self.backends.iter().filter(|b| b.healthy).count()
    }

    fn backend_mut(&mut self, id: u64) -> Option<&mut Backend> {
        self.backends.iter_mut().find(|b| b.id == id)
    }

    /// Hands free backend slots to waiting requests, oldest first.
    fn dispatch(&mut self) {
        while let Some(first) = self.waiters.first_entry() {
            let Some(i) = self.policy.pick(&self.backends, &mut self.rr_next) else {
                return;
            };
            let tx = first.remove();
            let b = &mut self.backends[i];
            b.in_flight += 1;
            if tx
                .send(Assignment {
                    backend: b.id,
                    hop: b.hop.clone(),
                })
                .is_err()
            {
                // Cannot happen (a leaving waiter removes itself first), but never leak a slot.
                b.in_flight -= 1;
            }
        }
    }

    fn release(&mut self, backend: u64) {
        if let Some(b) = self.backend_mut(backend) {
            b.in_flight = b.in_flight.saturating_sub(1);
        }
        self.dispatch();
    }

    /// Starts an activation unless one is under way; true when the caller must poke.
    fn activate(&mut self, now: Instant) -> bool {
        if self.activating {
            return false;
        }
        self.activating = true;
        self.activation_started = Some(now);
        self.counters.activations += 1;
        true
    }

    fn rearm(&mut self) {
        self.activating = false;
        self.activation_started = None;
    }

    /// Re-arms the activation when the last ready backend just went.
    fn rearm_if_lost(&mut self, healthy_before: usize) {
        if healthy_before > 0 && self.healthy_count() == 0 {
            self.rearm();
        }
    }

    fn record(&mut self, status: StatusCode) {
        *self.counters.responses.entry(status.as_u16()).or_default() += 1;
    }
}

/// Outcome of admitting a request.
enum Admission {
    Full,
    /// Nowhere to go and none coming: 503 with this reason.
    Refused(String),
    Queued {
        waiting: Waiting,
        cold: bool,
        poke: bool,
    },
}

impl Revision {
    pub(crate) fn new(
        namespace: &str,
        name: &str,
        params: RevisionParams,
        shared: Arc<Shared>,
    ) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Revision {
            namespace: namespace.to_string(),
            name: name.to_string(),
            shared,
            state: Mutex::new(State {
                policy: Policy::for_concurrency(params.container_concurrency),
                params,
                backends: Vec::new(),
                rr_next: 0,
                waiters: BTreeMap::new(),
                next_waiter: 0,
                activating: false,
                activation_started: None,
                refusal: None,
                stats: Stats::new(now),
                counters: Counters::default(),
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not wedge the data path (nor panic again in a Drop).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_params(&self, params: RevisionParams) {
        let mut st = self.state();
        st.policy = Policy::for_concurrency(params.container_concurrency);
        st.params = params;
        st.dispatch();
    }

    /// Replaces the backend set; new addresses start unprobed and are probed at once.
    pub(crate) fn set_backends(self: &Arc<Self>, mut addrs: Vec<SocketAddr>) {
        addrs.sort();
        addrs.dedup();
        let mut st = self.state();
        let before = st.healthy_count();
        let mut old = std::mem::take(&mut st.backends);
        let mut to_probe = Vec::new();
        st.backends = addrs
            .into_iter()
            .map(|addr| match old.iter().position(|b| b.hop.addr() == addr) {
                Some(i) => old.swap_remove(i),
                None => {
                    let id = NEXT_BACKEND_ID.fetch_add(1, Ordering::Relaxed);
                    to_probe.push((id, addr));
                    Backend {
                        id,
                        hop: Arc::new(RemoteHop::new(addr)),
                        healthy: false,
                        probing: true,
                        in_flight: 0,
                    }
                }
            })
            .collect();
        st.rearm_if_lost(before);
        st.dispatch();
        drop(st);
        for (id, addr) in to_probe {
            self.spawn_probe(id, addr);
        }
    }

    /// The backends that passed the probe.
    pub(crate) fn ready_backends(&self) -> Vec<SocketAddr> {
        let st = self.state();
        st.backends
            .iter()
            .filter(|b| b.healthy)
            .map(|b| b.hop.addr())
            .collect()
    }

    /// Sets why the revision cannot scale up (`None`: it can). While it cannot and has no
    /// ready backend, waiting requests and new ones get 503 with the reason at once.
    pub(crate) fn set_refusal(&self, why: Option<String>) {
        let mut st = self.state();
        if st.refusal == why {
            return;
        }
        st.refusal = why;
        if st.refusal.is_some() && st.healthy_count() == 0 {
            // Their waits end with the refusal (see `Waiting::recv`'s callers).
            st.waiters.clear();
            st.rearm();
        }
    }

    /// The answer for a request that cannot be served: the refusal, else the revision is gone.
    fn unavailable(&self) -> String {
        match &self.state().refusal {
            Some(why) => format!("revision {} cannot start: {why}", self.name),
            None => format!("revision {} was removed", self.name),
        }
    }

    /// The revision is gone: waiting requests get 503, backends are forgotten.
    pub(crate) fn remove(&self) {
        let mut st = self.state();
        st.waiters.clear();
        st.backends.clear();
        st.rearm();
    }

    pub(crate) fn waiting(&self) -> usize {
        self.state().waiters.len()
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let st = self.state();
        Snapshot {
            counters: st.counters.clone(),
            waiting: st.waiters.len(),
        }
    }

    /// The period's stat, resetting the period; `None` when the revision saw no load.
    pub(crate) fn take_stat(&self, now: Instant) -> Option<ActivatorStat> {
        let mut st = self.state();
        let s = &mut st.stats;
        s.flush(now);
        let elapsed = now.saturating_duration_since(s.period_start).as_secs_f64();
        let average = if elapsed > 0.0 {
            s.area / elapsed
        } else {
            s.concurrency as f64
        };
        let count = s.requests as f64;
        s.area = 0.0;
        s.requests = 0;
        s.period_start = now;
        (average > 0.0 || count > 0.0).then(|| ActivatorStat {
            namespace: self.namespace.clone(),
            revision: self.name.clone(),
            average_concurrency: average,
            request_count: count,
        })
    }

    fn spawn_probe(self: &Arc<Self>, id: u64, addr: SocketAddr) {
        self.shared
            .handle
            .spawn(probe_loop(Arc::downgrade(self), id, addr));
    }

    fn needs_probe(&self, id: u64) -> bool {
        self.state()
            .backends
            .iter()
            .any(|b| b.id == id && !b.healthy)
    }

    fn backend_passed(&self, id: u64) {
        let mut st = self.state();
        if let Some(b) = st.backend_mut(id) {
            b.healthy = true;
            b.probing = false;
            tracing::debug!(revision = %self.name, addr = %b.hop.addr(), "backend passed the probe");
        }
        st.dispatch();
    }

    /// A connection to the backend failed: it is taken out and probed again; the caller's
    /// slot on it is released.
    fn backend_failed(self: &Arc<Self>, id: u64) {
        let mut st = self.state();
        let before = st.healthy_count();
        let mut reprobe = None;
        if let Some(b) = st.backend_mut(id) {
            b.in_flight = b.in_flight.saturating_sub(1);
            b.healthy = false;
            if !b.probing {
                b.probing = true;
                reprobe = Some(b.hop.addr());
            }
        }
        st.rearm_if_lost(before);
        st.dispatch();
        drop(st);
        if let Some(addr) = reprobe {
            self.spawn_probe(id, addr);
        }
    }

    /// Admits a plain HTTP/1.1 request for the front door's fast path, counted like any
    /// other: at once when nobody is queued (FIFO stays fair) and a ready backend has a free
    /// slot, else in the queue (waking the revision when it has no ready backend). `None` for
    /// an h2c revision (the general path carries those).
    pub(crate) fn fast_admit(self: &Arc<Self>) -> Option<FastAdmit> {
        let now = Instant::now();
        let mut st = self.state();
        if st.params.h2c {
            return None;
        }
        if st.waiters.is_empty() {
            let st = &mut *st;
            if let Some(i) = st.policy.pick(&st.backends, &mut st.rr_next) {
                let b = &mut st.backends[i];
                b.in_flight += 1;
                let (id, hop) = (b.id, b.hop.clone());
                st.stats.arrive(now);
                let held = Held {
                    rev: self.clone(),
                    slot: Some(id),
                };
                return Some(FastAdmit::Now(hop, Permit { held, waited: None }));
            }
        }
        drop(st);
        let (held, admission, params) = self.admit(now);
        let (waiting, cold, poke) = match admission {
            Admission::Queued {
                waiting,
                cold,
                poke,
            } => (waiting, cold, poke),
            Admission::Full => {
                let text = format!("activator queue full for revision {}", self.name);
                self.state().record(StatusCode::SERVICE_UNAVAILABLE);
                return Some(FastAdmit::Refused(StatusCode::SERVICE_UNAVAILABLE, text));
            }
            Admission::Refused(why) => {
                self.state().record(StatusCode::SERVICE_UNAVAILABLE);
                return Some(FastAdmit::Refused(StatusCode::SERVICE_UNAVAILABLE, why));
            }
        };
        if poke {
            self.poke();
        }
        let deadline = now + params.total_timeout();
        let head_deadline = params
            .response_start_timeout
            .map_or(deadline, |rst| deadline.min(now + rst));
        Some(FastAdmit::Wait(Ticket {
            waiting,
            held,
            cold,
            arrived: now,
            head_deadline,
        }))
    }

    /// Receives a request's body whole when the revision buffers bodies and it is small
    /// enough (see [`RevisionParams::request_body_buffer`]), within the request's timeout; the
    /// answer when it cannot be (408 slow, 400 malformed, 504 past the timeout).
    async fn receive_body(
        &self,
        req: Request<Body>,
        arrived: Instant,
    ) -> Result<Request<Body>, Response<Body>> {
        let (limit, total) = {
            let st = self.state();
            let limit = if st.params.h2c {
                0
            } else {
                st.params.request_body_buffer
            };
            (limit, st.params.total_timeout())
        };
        if limit == 0 || http_body::Body::is_end_stream(req.body()) || is_upgrade(&req) {
            return Ok(req);
        }
        let (parts, body) = req.into_parts();
        match tokio::time::timeout_at(arrived + total, buffer_body(body, limit)).await {
            Err(_) => Err(self.timed_out()),
            Ok(Ok(body)) => Ok(Request::from_parts(parts, body)),
            Ok(Err(e @ BodyRefused::TooSlow(_))) => {
                Err(text_response(StatusCode::REQUEST_TIMEOUT, e.to_string()))
            }
            Ok(Err(e)) => Err(text_response(StatusCode::BAD_REQUEST, e.to_string())),
        }
    }

    /// Admits a request (counting it) or refuses it when the queue is full.
    fn admit(self: &Arc<Self>, now: Instant) -> (Held, Admission, RevisionParams) {
        let mut st = self.state();
        st.stats.arrive(now);
        let held = Held {
            rev: self.clone(),
            slot: None,
        };
        let params = st.params.clone();
        if st.waiters.len() >= self.shared.queue_depth.load(Ordering::Relaxed) {
            st.counters.overflows += 1;
            return (held, Admission::Full, params);
        }
        let cold = st.healthy_count() == 0;
        if cold && let Some(why) = &st.refusal {
            let why = format!("revision {} cannot start: {why}", self.name);
            return (held, Admission::Refused(why), params);
        }
        let poke = cold && st.activate(now);
        let id = st.next_waiter;
        st.next_waiter += 1;
        let waiting = self.enqueue(&mut st, id);
        (
            held,
            Admission::Queued {
                waiting,
                cold,
                poke,
            },
            params,
        )
    }

    fn enqueue(self: &Arc<Self>, st: &mut State, id: u64) -> Waiting {
        let (tx, rx) = oneshot::channel();
        st.waiters.insert(id, tx);
        st.dispatch();
        Waiting {
            rev: self.clone(),
            id,
            rx,
            done: false,
        }
    }

    /// Puts a request whose backend vanished back in line, in its original place. Returns
    /// whether it now waits for an activation and whether the caller must poke.
    fn requeue(self: &Arc<Self>, id: u64) -> (Waiting, bool, bool) {
        let mut st = self.state();
        let cold = st.healthy_count() == 0;
        let poke = cold && st.activate(Instant::now());
        let waiting = self.enqueue(&mut st, id);
        (waiting, cold, poke)
    }

    fn poke(&self) {
        tracing::info!(namespace = %self.namespace, revision = %self.name, "activating revision");
        (self.shared.poke)(&self.namespace, &self.name);
    }

    fn respond(&self, resp: Response<Body>) -> Response<Body> {
        self.state().record(resp.status());
        resp
    }

    /// A response that did not start within the revision's timeout once forwarded: 504.
    fn timed_out(&self) -> Response<Body> {
        let mut st = self.state();
        st.counters.timeouts += 1;
        st.record(StatusCode::GATEWAY_TIMEOUT);
        text_response(StatusCode::GATEWAY_TIMEOUT, "activator request timeout")
    }

    /// A wait for capacity that outlived the request's deadline: 503 with the reason, as
    /// Knative's activator answers a throttler deadline (it is overload, not a slow app).
    fn wait_expired(&self) -> Response<Body> {
        let mut st = self.state();
        st.counters.timeouts += 1;
        st.record(StatusCode::SERVICE_UNAVAILABLE);
        text_response(StatusCode::SERVICE_UNAVAILABLE, WAIT_EXPIRED_TEXT)
    }

    /// Records the cold start of the current activation at its first response.
    fn first_byte_of_activation(&self) {
        let started = self.state().activation_started.take();
        if let Some(started) = started {
            let mut h = self
                .shared
                .cold_starts
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            h.observe(Instant::now().saturating_duration_since(started));
        }
    }

    /// Waits for capacity (bounded queue, FIFO), then forwards; see the crate docs. A
    /// protocol switch (WebSocket) is forwarded as one, and once switched its connection runs
    /// in its own task holding the request's place in the statistics, its backend slot and
    /// whatever `hold` has left in it (taken), until either side closes it; the revision's
    /// timeouts stop at the switch.
    pub(crate) async fn handle(
        self: &Arc<Self>,
        req: Request<Body>,
        hold: &mut Option<Box<dyn Send>>,
    ) -> Response<Body> {
        let arrived = Instant::now();
        // The body first, whole when small: a slow upload waits for no instance and holds
        // no slot meanwhile.
        let req = match self.receive_body(req, arrived).await {
            Ok(req) => req,
            Err(resp) => return resp,
        };
        let (mut held, admission, params) = self.admit(arrived);
        let (mut waiting, mut cold, poke) = match admission {
            Admission::Queued {
                waiting,
                cold,
                poke,
            } => (waiting, cold, poke),
            Admission::Full => {
                return self.respond(text_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("activator queue full for revision {}", self.name),
                ));
            }
            Admission::Refused(why) => {
                return self.respond(text_response(StatusCode::SERVICE_UNAVAILABLE, why));
            }
        };
        if poke {
            self.poke();
        }
        let deadline = arrived + params.total_timeout();
        let head_deadline = params
            .response_start_timeout
            .map_or(deadline, |rst| deadline.min(arrived + rst));
        let upgrade = is_upgrade(&req);
        let mut req = prepare(req);
        loop {
            let assignment = match tokio::time::timeout_at(head_deadline, waiting.recv()).await {
                Err(_) => {
                    drop(waiting);
                    return self.wait_expired();
                }
                Ok(None) => {
                    return self.respond(text_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        self.unavailable(),
                    ));
                }
                Ok(Some(a)) => a,
            };
            held.slot = Some(assignment.backend);
            let waited = arrived.elapsed();
            // Boxed, so a waiting request's future holds no room for the forwarding state
            // (it halves the future: ~1.4 KB instead of ~2.5 KB).
            let forwarded = tokio::time::timeout_at(
                head_deadline,
                Box::pin(self.forward(upgrade, params.h2c, req, &assignment.hop)),
            )
            .await;
            match forwarded {
                Err(_) => return self.timed_out(),
                Ok(Ok((mut resp, tunnel))) => {
                    if cold {
                        resp.headers_mut().insert(
                            COLD_START_HEADER,
                            HeaderValue::from(waited.as_millis() as u64),
                        );
                        self.first_byte_of_activation();
                    }
                    self.state().record(resp.status());
                    if let Some(tunnel) = tunnel {
                        // Switched: no deadline any more, only the connection's own end.
                        spawn_tunnel(tunnel, (held, hold.take()));
                        return resp.map(boxed);
                    }
                    let rev = self.clone();
                    let on_cut = Box::new(move || {
                        rev.state().counters.timeouts += 1;
                    });
                    return resp.map(|b| {
                        boxed(GuardedBody::new(
                            DeadlineBody::new(b, deadline, on_cut),
                            held,
                        ))
                    });
                }
                Ok(Err(ForwardError::Retry(back, e))) => {
                    tracing::warn!(revision = %self.name, error = %e, "backend unreachable; retrying");
                    held.slot = None;
                    self.backend_failed(assignment.backend);
                    req = *back;
                    let (again, now_cold, poke) = self.requeue(waiting.id);
                    waiting = again;
                    cold |= now_cold;
                    if poke {
                        self.poke();
                    }
                }
                Ok(Err(e @ (ForwardError::Failed(_) | ForwardError::Unanswered(..)))) => {
                    let e = e.into_error();
                    tracing::warn!(revision = %self.name, error = %e, "forwarding failed");
                    return self.respond(e.to_response());
                }
            }
        }
    }

    /// Sends the request to its backend: over h2c for an h2c revision (an HTTP/1.1 protocol
    /// switch cannot cross HTTP/2, so there it goes as a plain request), as a protocol switch
    /// (with the tunnel on 101) when it asks for one, else plainly: a bodiless one over the
    /// backend's kept-alive raw connections ([`forward_to_hop`]).
    async fn forward(
        &self,
        upgrade: bool,
        h2c: bool,
        req: Request<Body>,
        hop: &RemoteHop,
    ) -> Result<(Response<Body>, Option<Tunnel>), ForwardError> {
        // An instance of this process: handed over directly, no loopback hop. A protocol
        // switch needs the connection, so it goes over TCP.
        if !upgrade && let Some(queue) = LocalQueue::lookup(hop.addr()) {
            return Ok((queue.handle(req).await, None));
        }
        if upgrade && !h2c {
            return forward_upgrade_retryable(&self.shared.client, req, hop.addr())
                .await
                .map(|(resp, tunnel)| (resp.map(boxed), tunnel));
        }
        let client = if h2c {
            &self.shared.h2c_client
        } else {
            &self.shared.client
        };
        forward_to_hop(client, hop, req)
            .await
            .map(|resp| (resp, None))
    }
}

/// Marks a request as the activator's and keeps its Host for the queue-proxy.
fn prepare(req: Request<Body>) -> Request<Body> {
    let (mut parts, body) = req.into_parts();
    strip_internal(&mut parts.headers);
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    if let Some(host) = host {
        parts.headers.insert(ORIGINAL_HOST_HEADER, host);
    }
    parts
        .headers
        .insert(PROXY_REQUEST_HEADER, HeaderValue::from_static("activator"));
    Request::from_parts(parts, body)
}

/// What a request holds in the activator until its response ends (or it is dropped): its
/// place in the concurrency statistics and, once forwarded, a slot on its backend.
struct Held {
    rev: Arc<Revision>,
    slot: Option<u64>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut st = self.rev.state();
        st.stats.leave(Instant::now());
        if let Some(backend) = self.slot.take() {
            st.release(backend);
        }
    }
}

/// How the activator takes a fast-path request ([`crate::Activator::fast_admit`]).
pub enum FastAdmit {
    /// Go now to this instance (its address, and its kept-alive connections when it is
    /// another process), holding the permit until the response is over.
    Now(Arc<RemoteHop>, Permit),
    /// Wait in line: [`Ticket::wait`].
    Wait(Ticket),
    /// Refused at once (the queue is full): answer with this.
    Refused(StatusCode, String),
}

/// A fast-path request's place in the activator's queue (FIFO, bounded wait). Dropping it
/// (the client left) leaves the queue.
pub struct Ticket {
    waiting: Waiting,
    held: Held,
    cold: bool,
    arrived: Instant,
    head_deadline: Instant,
}

impl Ticket {
    /// When the wait must give up (the revision's timeout, counted from arrival): the
    /// caller drops the [`Ticket::wait`] future then and answers what [`Expiry::fire`] says.
    /// The caller keeps the timer, so a waiting request carries no timer of its own here.
    pub fn deadline(&self) -> (Instant, Expiry) {
        (self.head_deadline, Expiry(self.held.rev.clone()))
    }

    /// Waits for a slot on a ready instance: the way to it and the permit, or the answer to
    /// give (503 when the revision was removed). It does not time out: see
    /// [`Ticket::deadline`].
    pub fn wait(
        self,
    ) -> impl Future<Output = Result<(Arc<RemoteHop>, Permit), (StatusCode, String)>> + Send {
        // Taken apart first, so the future holds each part once (many may wait at once).
        let Ticket {
            mut waiting,
            mut held,
            cold,
            arrived,
            head_deadline: _,
        } = self;
        async move {
            match waiting.recv().await {
                None => {
                    let rev = &held.rev;
                    rev.state().record(StatusCode::SERVICE_UNAVAILABLE);
                    Err((StatusCode::SERVICE_UNAVAILABLE, rev.unavailable()))
                }
                Some(a) => {
                    held.slot = Some(a.backend);
                    let waited = cold.then(|| arrived.elapsed());
                    Ok((a.hop, Permit { held, waited }))
                }
            }
        }
    }
}

/// A fast-path wait that reached its deadline ([`Ticket::deadline`]).
pub struct Expiry(Arc<Revision>);

impl Expiry {
    /// Counts the timeout and gives the answer: 503 with [`WAIT_EXPIRED_TEXT`].
    pub fn fire(self) -> (StatusCode, String) {
        let resp = self.0.wait_expired();
        (resp.status(), WAIT_EXPIRED_TEXT.to_string())
    }
}

/// A fast-path request's hold in the activator: its place in the revision's load statistics
/// and a slot on its backend, until dropped.
pub struct Permit {
    held: Held,
    /// How long it waited for the revision to wake, when it did.
    waited: Option<Duration>,
}

impl Permit {
    /// The `K-Cold-Start` value (milliseconds waited for an activation), if it waited for one.
    pub fn cold_start_ms(&self) -> Option<u64> {
        self.waited.map(|w| w.as_millis() as u64)
    }

    /// Records the status the request was answered with (for the activator's metrics), and
    /// the end of the activation it waited for.
    pub fn answered(&self, status: u16) {
        let rev = &self.held.rev;
        if let Ok(status) = StatusCode::from_u16(status) {
            rev.state().record(status);
        }
        if self.waited.is_some() {
            rev.first_byte_of_activation();
        }
    }
}

/// A request's place in the queue. Dropping it (client gone, timeout) leaves the queue at
/// once, and gives back a slot that was assigned but not yet taken up.
struct Waiting {
    rev: Arc<Revision>,
    id: u64,
    rx: oneshot::Receiver<Assignment>,
    done: bool,
}

impl Waiting {
    /// The assignment, or `None` when the revision was removed.
    async fn recv(&mut self) -> Option<Assignment> {
        let got = (&mut self.rx).await.ok();
        self.done = true;
        got
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut st = self.rev.state();
        if st.waiters.remove(&self.id).is_none()
            && let Ok(a) = self.rx.try_recv()
        {
            st.release(a.backend);
        }
        if st.waiters.is_empty() && st.healthy_count() == 0 {
            // Nobody waits for this activation any more: the next request starts a new one.
            st.rearm();
        }
    }
}

/// Probes one backend until it passes, is removed, or the revision is: at once, then with
/// pauses growing from 1 ms to `probe_interval` ([`rouse_queue::retry_pause`]). A queue-proxy of this process
/// also signals when its app turns ready, which ends the pause early; the probe itself still
/// decides.
async fn probe_loop(rev: Weak<Revision>, id: u64, addr: SocketAddr) {
    let Some((client, interval, timeout)) = rev.upgrade().map(|r| {
        (
            r.shared.probe_client.clone(),
            r.shared.cfg.probe_interval,
            r.shared.cfg.probe_timeout,
        )
    }) else {
        return;
    };
    let interval = interval.max(Duration::from_millis(1));
    let began = Instant::now();
    tracing::debug!(%addr, "probing a new backend");
    let mut local_ready = LocalQueue::lookup(addr).map(|q| q.ready());
    loop {
        if !rev.upgrade().is_some_and(|r| r.needs_probe(id)) {
            return;
        }
        let started = Instant::now();
        if probe_queue(&client, addr, timeout).await {
            if let Some(r) = rev.upgrade() {
                r.backend_passed(id);
            }
            return;
        }
        let until = started + rouse_queue::retry_pause(started - began, interval);
        let gone = if let Some(ready) = local_ready.as_mut()
            && !*ready.borrow_and_update()
        {
            matches!(
                tokio::time::timeout_at(until, ready.changed()).await,
                Ok(Err(_))
            )
        } else {
            tokio::time::sleep_until(until).await;
            false
        };
        if gone {
            // That queue-proxy is gone: back to plain pauses.
            local_ready = None;
            tokio::time::sleep_until(until).await;
        }
    }
}

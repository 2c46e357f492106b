//! The activator: a registry of revisions, the request entry point and the reports.

use foldhash::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use rouse_http::PROBE_HEADER;
use rouse_http::{Body, GuardedBody, ProxyClient, boxed, full, text_response};
use tokio::time::Instant;

use crate::config::{ActivatorConfig, ActivatorStat, Poke, RevisionParams};
use crate::metrics::{self, Histogram, rev_labels};
use crate::revision::FastAdmit;
use crate::revision::{Revision, Shared};

/// The value of `K-Network-Probe` that asks the activator itself, and its answer body.
pub const ACTIVATOR_PROBE: &str = "activator";

type RevisionMap = HashMap<String, HashMap<String, Arc<Revision>>>;

/// Buffers requests for revisions that have no ready instance, wakes them (one poke per
/// activation), probes their instances itself, and releases requests only up to each
/// instance's free capacity. See the crate docs for the full behaviour.
pub struct Activator {
    shared: Arc<Shared>,
    revisions: Mutex<RevisionMap>,
}

impl Activator {
    /// An activator with no revisions. `poke(namespace, revision)` is called once per
    /// activation. Must be called inside a Tokio runtime, where its probes then run.
    pub fn new(cfg: ActivatorConfig, poke: Poke) -> Arc<Self> {
        Arc::new(Activator {
            shared: Arc::new(Shared {
                queue_depth: AtomicUsize::new(cfg.queue_depth),
                cfg,
                poke,
                client: ProxyClient::http1(),
                h2c_client: ProxyClient::h2c(),
                probe_client: ProxyClient::unpooled(false),
                cold_starts: Mutex::new(Histogram::default()),
                handle: tokio::runtime::Handle::current(),
            }),
            revisions: Mutex::new(RevisionMap::default()),
        })
    }

    /// The settings it runs with now.
    pub fn config(&self) -> ActivatorConfig {
        ActivatorConfig {
            queue_depth: self.shared.queue_depth.load(Ordering::Relaxed),
            ..self.shared.cfg.clone()
        }
    }

    /// Changes how many requests may wait per revision (`activator-queue-depth`, followed
    /// live). Requests already waiting stay; only new arrivals meet the new bound.
    pub fn set_queue_depth(&self, depth: usize) {
        self.shared.queue_depth.store(depth, Ordering::Relaxed);
    }

    fn revisions(&self) -> MutexGuard<'_, RevisionMap> {
        self.revisions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, namespace: &str, revision: &str) -> Option<Arc<Revision>> {
        self.revisions()
            .get(namespace)
            .and_then(|r| r.get(revision))
            .cloned()
    }

    /// The revision's state, created with default parameters if unknown (a request may race
    /// ahead of [`Activator::set_revision`]).
    fn get_or_create(&self, namespace: &str, revision: &str) -> Arc<Revision> {
        let mut map = self.revisions();
        if let Some(r) = map.get(namespace).and_then(|r| r.get(revision)) {
            return r.clone();
        }
        let r = Revision::new(
            namespace,
            revision,
            RevisionParams::default(),
            self.shared.clone(),
        );
        map.entry(namespace.to_string())
            .or_default()
            .insert(revision.to_string(), r.clone());
        r
    }

    /// Sets (or updates) a revision's parameters. Waiting requests are re-placed at once if
    /// the capacity grew.
    pub fn set_revision(&self, ns: &str, rev: &str, params: RevisionParams) {
        self.get_or_create(ns, rev).set_params(params);
    }

    /// Every instance's queue-proxy address (ready or still starting). The activator probes
    /// each new one itself (`GET /` with `K-Network-Probe: queue`, expecting 200 and body
    /// `queue`, every `probe_interval`, `probe_timeout` per try) and sends requests only to
    /// those that passed. Addresses that stay keep their state and requests in flight.
    pub fn set_backends(&self, ns: &str, rev: &str, backends: Vec<SocketAddr>) {
        self.get_or_create(ns, rev).set_backends(backends);
    }

    /// The revision's instances that passed the activator's probe.
    pub fn ready_backends(&self, ns: &str, rev: &str) -> Vec<SocketAddr> {
        self.get(ns, rev)
            .map(|r| r.ready_backends())
            .unwrap_or_default()
    }

    /// Says why the revision cannot be scaled up (a limit on instances), or `None` once it
    /// can. While it cannot and has no ready instance, its requests (waiting or new) get 503
    /// with the reason at once rather than waiting out their timeout.
    pub fn set_refusal(&self, ns: &str, rev: &str, why: Option<String>) {
        match (self.get(ns, rev), why) {
            (Some(r), why) => r.set_refusal(why),
            (None, Some(why)) => self.get_or_create(ns, rev).set_refusal(Some(why)),
            (None, None) => {}
        }
    }

    /// Forgets a revision; requests waiting for it get 503.
    pub fn remove_revision(&self, ns: &str, rev: &str) {
        let removed = {
            let mut map = self.revisions();
            let removed = map.get_mut(ns).and_then(|r| r.remove(rev));
            if map.get(ns).is_some_and(|r| r.is_empty()) {
                map.remove(ns);
            }
            removed
        };
        if let Some(r) = removed {
            r.remove();
        }
    }

    /// Proxies one request for the revision: waits (bounded queue, FIFO) for a ready instance
    /// with free capacity, then forwards it. A request with `K-Network-Probe: activator` is
    /// answered 200 `activator` here.
    ///
    /// A request asking to switch protocols (a WebSocket handshake; see
    /// [`rouse_http::is_upgrade`]) waits the same way, the wait counted in the
    /// revision's timeout; it must be the request as the server received it (its extensions
    /// carry the client side of the upgrade). When the instance switches (101), the
    /// connection is carried in its own task and counts in [`Activator::take_stats`] and
    /// holds its instance's capacity slot until either side closes it, free of the revision's
    /// timeouts (as in Knative).
    pub async fn handle(&self, ns: &str, rev: &str, req: Request<Body>) -> Response<Body> {
        self.handle_holding(ns, rev, req, ()).await
    }

    /// Like [`Activator::handle`], keeping `hold` alive as long as the request lasts for the
    /// caller: until the response body ends or is dropped, or, for a switched connection,
    /// until that connection closes. A front end passes its in-flight guards here, since a
    /// 101's (empty) body ends long before its connection does.
    pub async fn handle_holding<G: Send + 'static>(
        &self,
        ns: &str,
        rev: &str,
        req: Request<Body>,
        hold: G,
    ) -> Response<Body> {
        let mut hold: Option<Box<dyn Send>> = Some(Box::new(hold));
        let resp = match req.headers().get(&PROBE_HEADER) {
            Some(probe) => probe_response(probe),
            None => self.get_or_create(ns, rev).handle(req, &mut hold).await,
        };
        match hold {
            Some(hold) => resp.map(|b| boxed(GuardedBody::new(b, hold))),
            None => resp,
        }
    }

    /// Takes a plain HTTP/1.1 request for the front door's fast path (the request itself
    /// stays with the caller, which sends it once admitted): at once when nobody is queued
    /// and a ready instance has a free slot, else in the FIFO queue, waking the revision when
    /// it has no ready instance, exactly as [`Activator::handle`] would. `None`: an unknown or
    /// h2c revision; use [`Activator::handle`].
    pub fn fast_admit(&self, ns: &str, rev: &str) -> Option<FastAdmit> {
        self.get(ns, rev)?.fast_admit()
    }

    /// Per revision with any load since the last call: the time-weighted average of requests
    /// in the activator (waiting or being proxied) and the requests received. Starts a new
    /// period. Revisions with no load are left out.
    pub fn take_stats(&self) -> Vec<ActivatorStat> {
        let now = Instant::now();
        self.all()
            .into_iter()
            .filter_map(|r| r.take_stat(now))
            .collect()
    }

    /// Requests of the revision waiting now (not yet forwarded).
    pub fn waiting(&self, ns: &str, rev: &str) -> usize {
        self.get(ns, rev).map_or(0, |r| r.waiting())
    }

    fn all(&self) -> Vec<Arc<Revision>> {
        let mut all: Vec<Arc<Revision>> = self
            .revisions()
            .values()
            .flat_map(|r| r.values().cloned())
            .collect();
        all.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        all
    }

    /// The activator's metrics in Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let revs: Vec<_> = self
            .all()
            .into_iter()
            .map(|r| (rev_labels(&r.namespace, &r.name), r.snapshot()))
            .collect();
        let mut out = String::new();
        let mut family = |name: &str, help: &str, kind: &str, value: &dyn Fn(usize) -> u64| {
            metrics::header(&mut out, name, help, kind);
            for (i, (labels, _)) in revs.iter().enumerate() {
                out.push_str(&format!("{name}{{{labels}}} {}\n", value(i)));
            }
        };
        family(
            "rouse_activator_activations_total",
            "Activations: requests found the revision with no ready instance and poked the autoscaler.",
            "counter",
            &|i| revs[i].1.counters.activations,
        );
        family(
            "rouse_activator_requests_queued",
            "Requests waiting in the activator now.",
            "gauge",
            &|i| revs[i].1.waiting as u64,
        );
        family(
            "rouse_activator_queue_overflows_total",
            "Requests refused with 503 because the revision's activator queue was full.",
            "counter",
            &|i| revs[i].1.counters.overflows,
        );
        family(
            "rouse_activator_timeouts_total",
            "Requests that hit the revision timeout in the activator (503 waiting, 504 forwarded, or a body cut off).",
            "counter",
            &|i| revs[i].1.counters.timeouts,
        );
        metrics::header(
            &mut out,
            "rouse_activator_requests_total",
            "Requests answered by the activator, by status code.",
            "counter",
        );
        for (labels, snap) in &revs {
            for (code, n) in &snap.counters.responses {
                out.push_str(&format!(
                    "rouse_activator_requests_total{{{labels},code=\"{code}\"}} {n}\n"
                ));
            }
        }
        self.shared
            .cold_starts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .render(
                "rouse_activator_cold_start_seconds",
                "From an activation's first request to the first response byte from an instance.",
                &mut out,
            );
        out
    }
}

fn probe_response(probe: &HeaderValue) -> Response<Body> {
    if probe == ACTIVATOR_PROBE {
        let mut resp = Response::new(full(ACTIVATOR_PROBE));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    } else {
        text_response(
            StatusCode::BAD_REQUEST,
            format!("unexpected probe header value {probe:?}"),
        )
    }
}

//! The gateway: the platform's front door.

use foldhash::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::service::service_fn;
use rouse_activator::{
    Activator, COLD_START_HEADER, Expiry, FastAdmit, ForwardError, Permit, Ticket,
    forward_upgrade_retryable, spawn_tunnel,
};
use rouse_http::h1::FastRequest;
use rouse_http::{
    Body, ClientAddr, FastDest, FastRoute, FrontRouter, GuardedBody, ProxyClient, RemoteHop, Route,
    ServerLimits, Tunnel, boxed, forward_to_hop, is_upgrade, push_token_or_quoted, serve_front,
    serve_tls, settle_request, strip_internal, text_response,
};
use rouse_queue::InFlightGuard;
use rouse_queue::{InFlight, LocalQueue};
use tokio::net::TcpListener;

use crate::backends::{Backend, Backends};
use crate::routing::{self, RouteTarget, RoutingTable, SetHeader, Visibility, normalize_host};
use crate::trust::TrustedProxies;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// Names the tag whose targets a request wants (tag-header-based routing); internal, so it
/// is stripped before the request goes on.
const TAG_HEADER: HeaderName = HeaderName::from_static("knative-serving-tag");

/// Where a revision's requests go (the ServerlessService mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Straight to the revision's instances; to the activator only while it has none, or
    /// when the picked one refuses the connection.
    Serve,
    /// Through the activator, which buffers, wakes the revision and throttles.
    Proxy,
}

/// One revision's routing state: swapped as a whole, read on every request.
#[derive(Debug)]
struct RevisionEntry {
    mode: Mode,
    /// The app speaks h2c: forward to its queue-proxies over HTTP/2 cleartext.
    h2c: bool,
    backends: Backends,
    /// Requests of the revision in the gateway, kept across swaps.
    in_flight: InFlight,
    /// The revision was deleted while routes still name it: its requests are answered 503 at
    /// once, never queued for an activation that cannot come.
    removed: bool,
    /// `Knative-Serving-Namespace` / `-Revision` header lines, for the fast path to a hop in
    /// another process (an activator learns the revision from them).
    named: Bytes,
}

/// The header lines naming a revision (as [`name_revision`] sets them).
fn revision_lines(namespace: &str, revision: &str) -> Bytes {
    let valid = |v: &str| HeaderValue::from_str(v).is_ok();
    if !valid(namespace) || !valid(revision) {
        return Bytes::new();
    }
    Bytes::from(format!(
        "knative-serving-namespace: {namespace}\r\nknative-serving-revision: {revision}\r\n"
    ))
}

type RevisionMap = HashMap<String, HashMap<String, Arc<RevisionEntry>>>;

/// Routes requests by Host to the revisions of a route (weighted), and per revision either to
/// the endpoint with the fewest requests in flight (Serve) or to the activator in-process
/// (Proxy, or Serve without endpoints). Its routing table and revision states are swapped
/// atomically, so updates never disturb a request in flight.
pub struct Gateway {
    routes: ArcSwap<RoutingTable>,
    revisions: ArcSwap<RevisionMap>,
    activator: Arc<Activator>,
    /// To HTTP/1.1 revisions' queue-proxies.
    client: ProxyClient,
    /// To h2c revisions' queue-proxies (pooled, multiplexed).
    h2c_client: ProxyClient,
    in_flight: InFlight,
    /// Clients whose `X-Forwarded-Proto` is kept (proxies in front of the gateway).
    trusted: ArcSwap<TrustedProxies>,
}

impl Gateway {
    /// A gateway with no routes and no revisions, handing Proxy-mode requests to `activator`.
    pub fn new(activator: Arc<Activator>) -> Arc<Self> {
        Arc::new(Gateway {
            routes: ArcSwap::from_pointee(RoutingTable::new()),
            revisions: ArcSwap::from_pointee(RevisionMap::default()),
            activator,
            client: ProxyClient::http1(),
            h2c_client: ProxyClient::h2c(),
            in_flight: InFlight::new(),
            trusted: ArcSwap::from_pointee(TrustedProxies::default()),
        })
    }

    /// Sets the proxies in front of the gateway whose `X-Forwarded-Proto` is kept (config-network
    /// `trusted-proxies`); from any other client the gateway, as the edge, sets it to the
    /// scheme it was reached with. Connections already open keep what they were told.
    pub fn set_trusted_proxies(&self, trusted: TrustedProxies) {
        self.trusted.store(Arc::new(trusted));
    }

    fn trusts(&self, ip: std::net::IpAddr) -> bool {
        self.trusted.load().contains(ip)
    }

    /// The activator Proxy-mode requests go to.
    pub fn activator(&self) -> &Arc<Activator> {
        &self.activator
    }

    /// Replaces the whole routing table at once.
    pub fn set_routes(&self, table: RoutingTable) {
        self.routes.store(Arc::new(table));
    }

    /// The routing table in force.
    pub fn routes(&self) -> Arc<RoutingTable> {
        self.routes.load_full()
    }

    /// Sets a revision's mode, endpoints and protocol in one atomic swap. Requests already
    /// past the switch finish where they went; every later request sees the new state.
    ///
    /// `h2c`: the revision's app speaks HTTP/2 cleartext (its port is named `h2c`), so its
    /// requests go to the queue-proxies over h2c, whatever the client spoke, keeping trailers
    /// (gRPC) and streaming both ways at once. The activator learns it from
    /// [`rouse_activator::RevisionParams::h2c`].
    pub fn set_revision(
        &self,
        namespace: &str,
        revision: &str,
        mode: Mode,
        endpoints: Vec<SocketAddr>,
        h2c: bool,
    ) {
        self.revisions.rcu(|current| {
            let mut next = RevisionMap::clone(current);
            let old = current.get(namespace).and_then(|r| r.get(revision));
            let entry = Arc::new(RevisionEntry {
                mode,
                h2c,
                backends: Backends::new(endpoints.clone(), old.map(|o| &o.backends)),
                in_flight: old.map(|o| o.in_flight.clone()).unwrap_or_default(),
                removed: false,
                named: revision_lines(namespace, revision),
            });
            next.entry(namespace.to_string())
                .or_default()
                .insert(revision.to_string(), entry);
            next
        });
    }

    /// Serve mode with these endpoints (empty: requests go to the activator until some exist),
    /// the protocol kept (HTTP/1.1 for a revision never set).
    pub fn set_endpoints(&self, namespace: &str, revision: &str, endpoints: Vec<SocketAddr>) {
        let h2c = self.is_h2c(namespace, revision);
        self.set_revision(namespace, revision, Mode::Serve, endpoints, h2c);
    }

    /// Forgets a revision (deleted); requests routed to it anyway go to the activator.
    pub fn remove_revision(&self, namespace: &str, revision: &str) {
        self.revisions.rcu(|current| {
            let mut next = RevisionMap::clone(current);
            if let Some(revs) = next.get_mut(namespace) {
                revs.remove(revision);
                if revs.is_empty() {
                    next.remove(namespace);
                }
            }
            next
        });
    }

    /// Marks a revision deleted: requests routed to it anyway get an immediate 503 naming it
    /// (as Knative's ingress answers for a split whose revision is gone) instead of waiting in
    /// the activator. Setting the revision again ([`Gateway::set_revision`]) clears the mark.
    pub fn mark_removed(&self, namespace: &str, revision: &str) {
        self.revisions.rcu(|current| {
            let mut next = RevisionMap::clone(current);
            let old = current.get(namespace).and_then(|r| r.get(revision));
            let entry = Arc::new(RevisionEntry {
                mode: Mode::Proxy,
                h2c: old.is_some_and(|o| o.h2c),
                backends: Backends::new(Vec::new(), None),
                in_flight: old.map(|o| o.in_flight.clone()).unwrap_or_default(),
                removed: true,
                named: Bytes::new(),
            });
            next.entry(namespace.to_string())
                .or_default()
                .insert(revision.to_string(), entry);
            next
        });
    }

    /// Whether the revision is marked deleted ([`Gateway::mark_removed`]).
    pub fn is_removed(&self, namespace: &str, revision: &str) -> bool {
        self.entry(namespace, revision).is_some_and(|e| e.removed)
    }

    fn entry(&self, namespace: &str, revision: &str) -> Option<Arc<RevisionEntry>> {
        self.revisions
            .load()
            .get(namespace)
            .and_then(|r| r.get(revision))
            .cloned()
    }

    /// The revision's mode in force (`None`: never set or removed, so the activator serves
    /// it). Serve mode without endpoints also lands on the activator.
    pub fn mode(&self, namespace: &str, revision: &str) -> Option<Mode> {
        self.entry(namespace, revision).map(|e| e.mode)
    }

    /// Whether the revision's requests go to its instances over h2c (false for a revision
    /// never set).
    pub fn is_h2c(&self, namespace: &str, revision: &str) -> bool {
        self.entry(namespace, revision).is_some_and(|e| e.h2c)
    }

    /// A revision's endpoints in force.
    pub fn endpoints(&self, namespace: &str, revision: &str) -> Vec<SocketAddr> {
        self.entry(namespace, revision)
            .map(|e| e.backends.list.iter().map(|b| b.addr).collect())
            .unwrap_or_default()
    }

    /// Requests being handled now (until their response bodies finish, or their switched
    /// connections close).
    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// Requests of the revision being handled now, whichever way they went (instances or
    /// activator), until their response bodies finish or, for a switched (WebSocket)
    /// connection, until it closes. 0 for a revision never set.
    pub fn in_flight_for(&self, namespace: &str, revision: &str) -> usize {
        self.entry(namespace, revision)
            .map_or(0, |e| e.in_flight.get())
    }

    /// Serves clients on `listener` (HTTP/1.1 keep-alive and h2c) until `shutdown` resolves,
    /// then lets requests in flight finish and returns once every connection has closed.
    /// Switched (WebSocket) connections run on in their own tasks until either side closes
    /// them (an instance's drain closes its own).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        self.serve_with(listener, shutdown, ServerLimits::default())
            .await;
    }

    /// [`Gateway::serve`] with other limits on clients (timeouts, head size).
    pub async fn serve_with(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
        limits: ServerLimits,
    ) {
        self.serve_for(Visibility::ClusterLocal, listener, shutdown, limits)
            .await;
    }

    /// [`Gateway::serve_with`] for the hosts `visibility` serves: [`Visibility::External`]
    /// (the listener behind the load balancer) answers cluster-local hosts 404, as unknown
    /// ones; [`Visibility::ClusterLocal`] serves every host.
    pub async fn serve_for(
        self: Arc<Self>,
        visibility: Visibility,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
        limits: ServerLimits,
    ) {
        let make = |remote: SocketAddr| {
            let gw = self.clone();
            // Formatted once per connection, not per request (an HTTP/2 connection has many).
            let client = Arc::new(ClientAddr::new(remote.ip()).trusted(gw.trusts(remote.ip())));
            service_fn(move |req| {
                let (gw, client) = (gw.clone(), client.clone());
                async move { Ok::<_, Infallible>(gw.handle(&client, visibility, req).await) }
            })
        };
        let router = Arc::new(FastRouter {
            gw: self.clone(),
            visibility,
        });
        serve_front(listener, make, router, shutdown, limits).await;
    }

    /// Serves HTTPS clients on `listener` until `shutdown` resolves (then as
    /// [`Gateway::serve`]): the certificate chosen by SNI from `certs` (a name without one is
    /// refused), HTTP/2 or HTTP/1.1 by ALPN. Requests route exactly as plain ones, except that
    /// a host redirected to HTTPS is served here, and the app is told `https`. It is an
    /// external listener: cluster-local hosts are answered 404 ([`Visibility::External`]).
    pub async fn serve_tls(
        self: Arc<Self>,
        listener: TcpListener,
        certs: Arc<crate::Certificates>,
        shutdown: impl Future<Output = ()> + Send + 'static,
        limits: ServerLimits,
    ) {
        let make = |remote: SocketAddr| {
            let gw = self.clone();
            let client = Arc::new(
                ClientAddr::new(remote.ip())
                    .trusted(gw.trusts(remote.ip()))
                    .secure(true),
            );
            service_fn(move |req| {
                let (gw, client) = (gw.clone(), client.clone());
                async move { Ok::<_, Infallible>(gw.handle(&client, Visibility::External, req).await) }
            })
        };
        let tls = crate::server_config(certs);
        serve_tls(listener, tls, make, shutdown, limits).await;
    }

    async fn handle(
        &self,
        client: &ClientAddr,
        visibility: Visibility,
        mut req: Request<Body>,
    ) -> Response<Body> {
        if let Err(e) = settle_request(&mut req) {
            return text_response(StatusCode::BAD_REQUEST, e.to_string());
        }
        let counted = self.in_flight.start();
        // A handle on the header's bytes (no copy), kept past taking the request apart.
        let host_value = req
            .headers()
            .get(header::HOST)
            .filter(|h| h.to_str().is_ok())
            .cloned()
            .or_else(|| {
                req.uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            });
        let Some(host) = host_value.as_ref().and_then(|h| h.to_str().ok()) else {
            return text_response(StatusCode::BAD_REQUEST, "missing Host header");
        };
        // The table stays alive with the request: its target names are borrowed, not copied.
        let routes = self.routes.load_full();
        // A host this listener does not serve is as unknown here as one no rule names (the
        // client asked for it, so a mapped domain's target does not count).
        if !visibility.serves(&routes, host) {
            return no_route(host);
        }
        if !client.is_secure() && routes.redirects(host) {
            return redirect_to_https(host, req.uri());
        }
        // A mapped domain takes its target host's traffic, and the app sees the target host
        // (the fast path leaves unrouted hosts, mapped ones among them, to this path).
        let (lookup, rewrite) = routes.serving_host(host);
        // Headers per target (an Ingress split's own), for hosts routed by path rules.
        let mut per_target: &[Vec<SetHeader>] = &[];
        let (targets, set_headers) = if let Some(rules) = routes.rules(lookup) {
            let path = req.uri().path();
            let Some(rule) = rules.iter().find(|r| r.matches(path, req.headers())) else {
                return text_response(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no route for host {:?} and path {path:?}",
                        normalize_host(host)
                    ),
                );
            };
            per_target = &rule.target_appended;
            (rule.targets.as_slice(), rule.appended.as_slice())
        } else {
            let Some(targets) = routes.get(lookup) else {
                if let Some(why) = routes.unavailable(lookup) {
                    return text_response(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"));
                }
                return no_route(host);
            };
            let tag = tagged(&routes, host, req.headers());
            let targets = tag.map_or(targets, |(_, t)| t);
            // Looked up now, while the tag (borrowed from the request) is at hand.
            (targets, routes.appended(host, tag.map(|(tag, _)| tag)))
        };
        let total = routing::total(targets);
        let Some(picked) = (total > 0)
            .then(|| routing::pick_index(targets, fastrand::u64(0..total)))
            .flatten()
        else {
            return text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no traffic target for host {:?}", normalize_host(host)),
            );
        };
        let target = &targets[picked];
        let split_headers = per_target.get(picked).map_or(&[][..], Vec::as_slice);
        let (namespace, revision) = (target.namespace.as_str(), target.revision.as_str());
        let entry = self.entry(namespace, revision);
        if entry.as_ref().is_some_and(|e| e.removed) {
            return text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                removed_text(namespace, revision),
            );
        }
        let guards = (counted, entry.as_ref().map(|e| e.in_flight.start()));
        let (mut parts, body) = req.into_parts();
        strip_internal(&mut parts.headers);
        add_forwarding(&mut parts.headers, client, host);
        for (name, value) in set_headers.iter().chain(split_headers) {
            parts.headers.insert(name.clone(), value.clone());
        }
        if let Some(target) = rewrite {
            rewrite_host(&mut parts, target);
        }
        let mut req = Request::from_parts(parts, body);
        if let Some(e) = entry.as_ref().filter(|e| e.mode == Mode::Serve)
            && let Some(backend) = e.backends.pick()
        {
            let busy = backend.in_flight.start();
            // An instance of this process: handed over directly, no loopback hop. A protocol
            // switch needs the connection, so it goes over TCP.
            if !is_upgrade(&req)
                && let Some(queue) = LocalQueue::lookup(backend.addr)
            {
                let resp = queue.handle(req).await;
                return resp.map(|b| boxed(GuardedBody::new(b, (guards, busy))));
            }
            // Over the network the next hop may be an activator (Proxy mode on Kubernetes):
            // it learns the revision from these, as from Knative's ingresses. The
            // queue-proxy strips them.
            name_revision(req.headers_mut(), namespace, revision);
            match Box::pin(self.forward(req, backend, e.h2c)).await {
                Ok((resp, Some(tunnel))) => {
                    // Switched: the connection counts as in flight until it closes.
                    spawn_tunnel(tunnel, (guards, busy));
                    return resp;
                }
                Ok((resp, None)) => {
                    return resp.map(|b| boxed(GuardedBody::new(b, (guards, busy))));
                }
                Err(ForwardError::Retry(back, err)) => {
                    // The instance just went away and nothing was sent: the activator waits
                    // for another instead of failing the request.
                    tracing::debug!(%revision, error = %err, "endpoint refused; handing to the activator");
                    req = *back;
                }
                Err(err @ (ForwardError::Failed(_) | ForwardError::Unanswered(..))) => {
                    let err = err.into_error();
                    tracing::warn!(%revision, error = %err, "forwarding failed");
                    return err.to_response();
                }
            }
        }
        // The activator keeps the guards until the response ends, or a switched connection
        // closes.
        // Boxed: the activator's state machine is large and most requests never get here.
        Box::pin(
            self.activator
                .handle_holding(namespace, revision, req, guards),
        )
        .await
    }

    /// Sends a request to an instance: over h2c to an h2c revision (an HTTP/1.1 protocol
    /// switch cannot cross HTTP/2, so there it goes as a plain request), as a protocol switch
    /// (with the tunnel on 101) when it asks for one, else plainly: a bodiless one over the
    /// instance's kept-alive raw connections ([`forward_to_hop`]).
    async fn forward(
        &self,
        req: Request<Body>,
        backend: &Backend,
        h2c: bool,
    ) -> Result<(Response<Body>, Option<Tunnel>), ForwardError> {
        if !h2c && is_upgrade(&req) {
            return forward_upgrade_retryable(&self.client, req, backend.addr)
                .await
                .map(|(resp, tunnel)| (resp.map(boxed), tunnel));
        }
        let client = if h2c { &self.h2c_client } else { &self.client };
        forward_to_hop(client, &backend.hop, req)
            .await
            .map(|resp| (resp, None))
    }
}

/// The answer for a host no route serves (on this listener).
fn no_route(host: &str) -> Response<Body> {
    text_response(
        StatusCode::NOT_FOUND,
        format!("no route for host {:?}", normalize_host(host)),
    )
}

/// The tag a request names in `Knative-Serving-Tag` and its targets, when its host is routed
/// by tag and has that tag (exact match); `None` sends it to the host's own targets.
fn tagged<'a, 'h>(
    routes: &'a RoutingTable,
    host: &str,
    headers: &'h HeaderMap,
) -> Option<(&'h str, &'a [RouteTarget])> {
    let tag = headers.get(TAG_HEADER)?.to_str().ok()?;
    routes.get_tagged(host, tag).map(|t| (tag, t))
}

/// Sends the request on as one for `host` (a DomainMapping's Host rewrite): the Host header,
/// and the URI's authority when it carries one (HTTP/2, absolute form). The client's own host
/// stays in `Forwarded`.
fn rewrite_host(parts: &mut http::request::Parts, host: &str) {
    let Ok(value) = HeaderValue::from_str(host) else {
        return;
    };
    if parts.uri.authority().is_some() {
        let mut uri = parts.uri.clone().into_parts();
        uri.authority = http::uri::Authority::from_maybe_shared(value.clone()).ok();
        if let Ok(uri) = http::Uri::from_parts(uri) {
            parts.uri = uri;
        }
    }
    parts.headers.insert(header::HOST, value);
}

/// The answer to a plain-HTTP request for a host served over HTTPS only: `301` to the same
/// host (without the port it was reached on: the HTTPS one is the default) and path.
fn redirect_to_https(host: &str, uri: &http::Uri) -> Response<Body> {
    let bare = routing::without_port(host);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{bare}{path}");
    let Ok(value) = HeaderValue::from_str(&location) else {
        return text_response(StatusCode::BAD_REQUEST, "invalid Host header");
    };
    let mut resp = text_response(StatusCode::MOVED_PERMANENTLY, format!("{location}\n"));
    resp.headers_mut().insert(header::LOCATION, value);
    resp
}

/// Names the revision a request is for (`Knative-Serving-Namespace`, `-Revision`).
fn name_revision(headers: &mut HeaderMap, namespace: &str, revision: &str) {
    if let (Ok(ns), Ok(rev)) = (
        HeaderValue::from_str(namespace),
        HeaderValue::from_str(revision),
    ) {
        headers.insert(HeaderName::from_static("knative-serving-namespace"), ns);
        headers.insert(HeaderName::from_static("knative-serving-revision"), rev);
    }
}

/// The gateway's choice for the fast path: a plain request for a host whose picked revision
/// speaks HTTP/1.1 and is either in Serve mode with an endpoint, or in Proxy mode (or Serve
/// mode without endpoints) where the activator takes it: at once to a free instance, or into
/// its queue, waking the revision. Either way the instance must be a queue-proxy of this
/// process. The request counts (gateway, revision, endpoint or activator slot) are held while
/// it waits and is served, as on the general path. A host its listener does not serve goes to
/// the general path, which answers 404.
struct FastRouter {
    gw: Arc<Gateway>,
    visibility: Visibility,
}

/// What a fast-path request holds: the gateway's and the revision's counts, then the
/// endpoint's (Serve) or the activator's permit (Proxy).
type FastHold = (InFlightGuard, InFlightGuard, Slot);

enum Slot {
    Endpoint(#[allow(dead_code)] InFlightGuard),
    Activator(Permit),
}

/// A fast-path request waiting in the activator, with the gateway's and revision's counts.
struct FastWait {
    ticket: Ticket,
    counts: (InFlightGuard, InFlightGuard),
}

impl FastRouter {
    fn activator_route(
        permit: Permit,
        hop: &RemoteHop,
        counts: (InFlightGuard, InFlightGuard),
    ) -> FastAnswer {
        let Some(queue) = LocalQueue::lookup(hop.addr()) else {
            return Route::General;
        };
        let extra_response_headers = permit
            .cold_start_ms()
            .map(|ms| format!("{COLD_START_HEADER}: {ms}\r\n").into_bytes())
            .unwrap_or_default();
        Route::Go(FastRoute {
            dest: FastDest::Local(queue),
            hold: (counts.0, counts.1, Slot::Activator(permit)),
            proxied: true,
            extra_request_headers: Bytes::new(),
            extra_response_headers,
        })
    }
}

type FastAnswer = Route<FastHold, FastWait, LocalQueue>;

impl FrontRouter for FastRouter {
    type Local = LocalQueue;
    type Hold = FastHold;
    type Wait = FastWait;
    type Expiry = Expiry;

    fn route(&self, req: &FastRequest<'_>) -> FastAnswer {
        let host = req.host;
        let gw = &self.gw;
        let routes = gw.routes.load();
        let Some(targets) = routes.get(host) else {
            return Route::General;
        };
        if !self.visibility.serves(&routes, host) {
            return Route::General;
        }
        if routes.needs_general(host) {
            // The fast path sees no headers, sets none and never redirects: the general path
            // does.
            return Route::General;
        }
        let total = routing::total(targets);
        let Some(target) = (total > 0)
            .then(|| routing::pick(targets, fastrand::u64(0..total)))
            .flatten()
        else {
            return Route::General;
        };
        let revisions = gw.revisions.load();
        let Some(entry) = revisions
            .get(target.namespace.as_str())
            .and_then(|r| r.get(target.revision.as_str()))
        else {
            return Route::General;
        };
        if entry.removed {
            return Route::Answer(
                StatusCode::SERVICE_UNAVAILABLE,
                removed_text(&target.namespace, &target.revision),
            );
        }
        if entry.h2c {
            return Route::General;
        }
        if entry.mode == Mode::Serve
            && let Some(backend) = entry.backends.pick()
        {
            // In this process: handed over directly. Another process (a sidecar, or an
            // activator on Kubernetes): over kept-alive raw connections, naming the revision.
            let (dest, extra_request_headers) = match LocalQueue::lookup(backend.addr) {
                Some(queue) => (FastDest::Local(queue), Bytes::new()),
                None => (FastDest::Remote(backend.hop.clone()), entry.named.clone()),
            };
            let hold = (
                gw.in_flight.start(),
                entry.in_flight.start(),
                Slot::Endpoint(backend.in_flight.start()),
            );
            return Route::Go(FastRoute {
                dest,
                hold,
                proxied: false,
                extra_request_headers,
                extra_response_headers: Vec::new(),
            });
        }
        // Proxy mode, or Serve mode with no endpoint yet: the activator's.
        let Some(admit) = gw.activator.fast_admit(&target.namespace, &target.revision) else {
            return Route::General;
        };
        let counts = (gw.in_flight.start(), entry.in_flight.start());
        match admit {
            FastAdmit::Now(hop, permit) => Self::activator_route(permit, &hop, counts),
            FastAdmit::Wait(ticket) => Route::Wait(FastWait { ticket, counts }),
            FastAdmit::Refused(status, text) => Route::Answer(status, text),
        }
    }

    fn wait(&self, wait: FastWait) -> impl Future<Output = FastAnswer> + Send {
        // Taken apart first, so the future holds the ticket once (many may wait at once).
        let FastWait { ticket, counts } = wait;
        let ticket = ticket.wait();
        async move {
            match ticket.await {
                Ok((hop, permit)) => Self::activator_route(permit, &hop, counts),
                Err((status, text)) => Route::Answer(status, text),
            }
        }
    }

    fn deadline(&self, wait: &FastWait) -> Option<(tokio::time::Instant, Expiry)> {
        Some(wait.ticket.deadline())
    }

    fn expired(&self, expiry: Expiry) -> FastAnswer {
        let (status, text) = expiry.fire();
        Route::Answer(status, text)
    }

    fn answered(&self, hold: &FastHold, status: u16) {
        if let Slot::Activator(permit) = &hold.2 {
            permit.answered(status);
        }
    }

    fn trusts(&self, ip: std::net::IpAddr) -> bool {
        self.gw.trusts(ip)
    }
}

/// The answer for a request routed to a deleted revision.
fn removed_text(namespace: &str, revision: &str) -> String {
    format!(
        "revision {revision:?} in namespace {namespace:?} no longer exists: it was deleted while the route's traffic still names it (the Route reports RevisionMissing)\n"
    )
}

/// Adds `X-Forwarded-For` (appended), `X-Forwarded-Proto` (`http` or `https` as the client
/// connected, or a trusted proxy's own)
/// and an RFC 7239 `Forwarded` element (appended) for a client at `client` asking for `host`:
/// the same forms the fast path writes ([`ClientAddr`]).
fn add_forwarding(headers: &mut HeaderMap, client: &ClientAddr, host: &str) {
    append_list(headers, X_FORWARDED_FOR, client.ip().as_bytes());
    if !client.is_trusted() {
        headers.remove(X_FORWARDED_PROTO);
    }
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(client.scheme()));
    }
    let mut element = Vec::with_capacity(32 + host.len());
    element.extend_from_slice(b"for=");
    element.extend_from_slice(client.node().as_bytes());
    element.extend_from_slice(b";host=");
    push_token_or_quoted(host.as_bytes(), &mut element);
    element.extend_from_slice(b";proto=");
    element.extend_from_slice(client.scheme().as_bytes());
    append_list(headers, FORWARDED, &element);
}

/// Appends `value` to a comma-separated list header, merging any repeated fields.
fn append_list(headers: &mut HeaderMap, name: HeaderName, value: &[u8]) {
    let mut list = Vec::new();
    for v in headers.get_all(&name) {
        list.extend_from_slice(v.as_bytes());
        list.extend_from_slice(b", ");
    }
    list.extend_from_slice(value);
    if let Ok(v) = HeaderValue::from_bytes(&list) {
        headers.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_headers_follow_rfc_7239() {
        let mut h = HeaderMap::new();
        add_forwarding(
            &mut h,
            &ClientAddr::new("10.0.0.7".parse().unwrap()),
            "hello.default.localhost:8080",
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(
            h["forwarded"],
            "for=10.0.0.7;host=\"hello.default.localhost:8080\";proto=http"
        );

        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("2.2.2.2"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("forwarded", HeaderValue::from_static("for=1.1.1.1"));
        add_forwarding(
            &mut h,
            &ClientAddr::new("::1".parse().unwrap()).trusted(true),
            "hello.localhost",
        );
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, ::1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(
            h["forwarded"],
            "for=1.1.1.1, for=\"[::1]\";host=hello.localhost;proto=http"
        );

        // From a client that is not a trusted proxy, the scheme is the gateway's own.
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        add_forwarding(&mut h, &ClientAddr::new("10.0.0.7".parse().unwrap()), "h");
        assert_eq!(h["x-forwarded-proto"], "http");
    }
}

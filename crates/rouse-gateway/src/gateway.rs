//! The gateway: the platform's front door.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use rouse_queue::InFlight;
use rouse_queue::http::{
    Body, GuardedBody, ProxyClient, boxed, serve, strip_internal, text_response,
};
use tokio::net::TcpListener;

use crate::backends::Backends;
use crate::routing::{self, RoutingTable, normalize_host};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

type EndpointMap = HashMap<String, HashMap<String, Arc<Backends>>>;

/// Routes requests by Host to the revisions of a route (weighted), and within a revision to
/// the endpoint with the fewest requests in flight. Its routing table and endpoints are
/// swapped atomically, so updates never disturb a request in flight.
pub struct Gateway {
    routes: ArcSwap<RoutingTable>,
    endpoints: ArcSwap<EndpointMap>,
    client: ProxyClient,
    in_flight: InFlight,
}

impl Gateway {
    /// A gateway with no routes and no endpoints.
    pub fn new() -> Arc<Self> {
        Arc::new(Gateway {
            routes: ArcSwap::from_pointee(RoutingTable::new()),
            endpoints: ArcSwap::from_pointee(HashMap::new()),
            client: ProxyClient::http1(),
            in_flight: InFlight::new(),
        })
    }

    /// Replaces the whole routing table at once.
    pub fn set_routes(&self, table: RoutingTable) {
        self.routes.store(Arc::new(table));
    }

    /// The routing table in force.
    pub fn routes(&self) -> Arc<RoutingTable> {
        self.routes.load_full()
    }

    /// Replaces a revision's endpoints at once (empty: the revision has none).
    pub fn set_endpoints(&self, namespace: &str, revision: &str, endpoints: Vec<SocketAddr>) {
        self.endpoints.rcu(|current| {
            let mut next = EndpointMap::clone(current);
            let old = current.get(namespace).and_then(|r| r.get(revision));
            if endpoints.is_empty() {
                if let Some(revs) = next.get_mut(namespace) {
                    revs.remove(revision);
                    if revs.is_empty() {
                        next.remove(namespace);
                    }
                }
            } else {
                let backends = Arc::new(Backends::new(endpoints.clone(), old.map(Arc::as_ref)));
                next.entry(namespace.to_string())
                    .or_default()
                    .insert(revision.to_string(), backends);
            }
            next
        });
    }

    /// A revision's endpoints in force.
    pub fn endpoints(&self, namespace: &str, revision: &str) -> Vec<SocketAddr> {
        self.endpoints
            .load()
            .get(namespace)
            .and_then(|r| r.get(revision))
            .map(|b| b.list.iter().map(|b| b.addr).collect())
            .unwrap_or_default()
    }

    /// Requests being handled now (until their response bodies finish).
    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// Serves clients on `listener` (HTTP/1.1 keep-alive and h2c) until `shutdown` resolves,
    /// then lets requests in flight finish and returns once every connection has closed.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let make = |remote: SocketAddr| {
            let gw = self.clone();
            service_fn(move |req| {
                let gw = gw.clone();
                async move { Ok::<_, Infallible>(gw.handle(remote, req).await) }
            })
        };
        serve(listener, make, shutdown).await;
    }

    async fn handle(&self, remote: SocketAddr, req: Request<Incoming>) -> Response<Body> {
        let counted = self.in_flight.start();
        let host = match req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
        {
            Some(h) => h.to_string(),
            None => return text_response(StatusCode::BAD_REQUEST, "missing Host header"),
        };
        let routes = self.routes.load();
        let Some(targets) = routes.get(&host) else {
            return text_response(
                StatusCode::NOT_FOUND,
                format!("no route for host {:?}", normalize_host(&host)),
            );
        };
        let total = routing::total(targets);
        let Some(target) = (total > 0)
            .then(|| routing::pick(targets, fastrand::u64(0..total)))
            .flatten()
        else {
            return text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no traffic target for host {:?}", normalize_host(&host)),
            );
        };
        let endpoints = self.endpoints.load();
        let Some(backend) = endpoints
            .get(&target.namespace)
            .and_then(|r| r.get(&target.revision))
            .and_then(|b| b.pick())
        else {
            return text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no healthy instance for revision {}", target.revision),
            );
        };
        let guards = (backend.in_flight.start(), counted);
        let addr = backend.addr;
        let (mut parts, body) = req.into_parts();
        strip_internal(&mut parts.headers);
        add_forwarding(&mut parts.headers, remote.ip(), &host);
        let req = Request::from_parts(parts, boxed(body));
        match self.client.forward(req, addr).await {
            Ok(resp) => resp.map(|b| boxed(GuardedBody::new(b, guards))),
            Err(e) => {
                tracing::warn!(revision = %target.revision, error = %e, "forwarding failed");
                e.to_response()
            }
        }
    }
}

/// Adds `X-Forwarded-For` (appended), `X-Forwarded-Proto` (when absent) and an RFC 7239
/// `Forwarded` element (appended) for a client at `client` asking for `host`.
fn add_forwarding(headers: &mut HeaderMap, client: IpAddr, host: &str) {
    let client = match client {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    append_list(headers, X_FORWARDED_FOR, &client.to_string());
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    let node = match client {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("\"[{ip}]\""),
    };
    let element = format!("for={node};host={};proto=http", token_or_quoted(host));
    append_list(headers, FORWARDED, &element);
}

/// Appends `value` to a comma-separated list header, merging any repeated fields.
fn append_list(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    let mut items: Vec<String> = headers
        .get_all(&name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    items.push(value.to_string());
    if let Ok(v) = HeaderValue::from_str(&items.join(", ")) {
        headers.insert(name, v);
    }
}

/// An RFC 7230 token as is, anything else as a quoted-string.
fn token_or_quoted(s: &str) -> String {
    let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !s.is_empty() && s.chars().all(is_tchar) {
        s.to_string()
    } else {
        let escaped: String = s
            .chars()
            .flat_map(|c| match c {
                '"' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        format!("\"{escaped}\"")
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
            "10.0.0.7".parse().unwrap(),
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
        add_forwarding(&mut h, "::1".parse().unwrap(), "hello.localhost");
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, ::1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(
            h["forwarded"],
            "for=1.1.1.1, for=\"[::1]\";host=hello.localhost;proto=http"
        );
    }
}

//! The gateway: Rouse's front door. It routes each request by its Host header (port ignored,
//! case-insensitive) to one of the route's revisions, picked at random by traffic percent.
//! Each revision has a [`Mode`] (its ServerlessService mode) and endpoints, swapped together
//! atomically and read on every request:
//! - Serve with endpoints: to the instance (queue-proxy) with the fewest requests in flight;
//!   if that one refuses the connection (it just went away; nothing was sent), to the
//!   activator instead of a 502;
//! - Proxy, or Serve without endpoints, or a revision never set: handed in-process to the
//!   [`rouse_activator::Activator`], which buffers while the revision wakes.
//!
//! With tag-header-based routing on (`config-features`), a host may also carry per-tag
//! targets: a request naming one of its tags in `Knative-Serving-Tag` goes to that tag's
//! revision, any other (no header, an unknown tag) to the host's own split. Such hosts are
//! served by the general path, which sees the header. A host may also have headers set on
//! its requests, per the route they took (a Kubernetes Ingress path's `appendHeaders`).
//!
//! A host may instead be routed by path and headers ([`PathRule`]s, a Kubernetes Ingress's
//! paths: prefix match, header matches tried first, then the longest prefix), and may have
//! its plain-HTTP requests redirected to HTTPS (`301`). Both take the general path.
//!
//! [`Gateway::serve_tls`] serves HTTPS (TLS 1.2/1.3, ALPN h2 and http/1.1) with the
//! certificate [`Certificates`] holds for the client's SNI, refusing names it has none for.
//!
//! Each listener has a [`Visibility`]: an external one ([`Gateway::serve_for`] with
//! [`Visibility::External`], and [`Gateway::serve_tls`]) answers the hosts the table marks
//! cluster-local 404, as unknown ones; a cluster-local one serves every host.
//!
//! Client-sent internal headers are stripped and `X-Forwarded-*`/`Forwarded` added (scheme
//! `https` over TLS).
//!
//! Clients may speak HTTP/1.1 or h2c (prior knowledge). Each revision has a protocol too: an
//! h2c revision (its port named `h2c`) is reached over HTTP/2 cleartext all the way, by the
//! gateway and the activator alike, whatever the client spoke, so gRPC's trailers and
//! full-duplex streams survive every hop; an HTTP/1.1 client's plain requests are carried
//! over it unchanged.
//! To an HTTP/1.1 revision's instance in another process, a request without a body (an
//! HTTP/2 GET, say) goes over the kept-alive raw connections the fast path uses, one pool per
//! endpoint, dropped with it; others go with the pooled client.
//!
//! A request asking to switch protocols (a WebSocket handshake) goes the same way with its
//! `Upgrade` kept; when the instance switches (101), the connection is carried both ways in
//! its own task and counts as a request in flight (the gateway's, the revision's, the
//! instance's) until either side closes it. In Proxy mode the activator carries it and holds
//! the gateway's counts for it. Any other answer passes back unchanged.
//!
//! Status codes: unknown host (or a path no rule matches) 404; upstream failure after the request left 502; the
//! activator's own (queue full 503, wait deadline 504).

#![warn(missing_docs)]

mod backends;
mod gateway;
mod routing;
mod tls;
mod trust;

pub use gateway::{Gateway, Mode};
pub use routing::{PathRule, RouteTarget, RoutingTable, SetHeader, Visibility, normalize_host};
pub use tls::{BadCertificate, Certificates, certified_key, server_config};
pub use trust::{BadRange, TrustedProxies};

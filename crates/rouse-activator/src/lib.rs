//! The activator: the hop that holds requests for a revision with no ready instance (SKS
//! Proxy mode), wakes the revision and releases the requests as capacity appears. In local
//! mode the gateway hands it requests in-process; in Kubernetes mode it will run as its own
//! Deployment.
//!
//! Per revision it keeps:
//! - a bounded FIFO of waiting requests ([`ActivatorConfig::queue_depth`]); beyond it an
//!   immediate 503 `activator queue full for revision <rev>`. A waiting request holds only its
//!   head and a small record; its body stays in the socket until forwarded;
//! - one activation at a time: the first request that finds no probed-ready instance calls the
//!   [`Poke`] at once; the next activation is armed when the revision loses all its ready
//!   instances again (or nobody waits any more and none became ready);
//! - its own probe of every instance's queue-proxy (`K-Network-Probe: queue` → 200 `queue`)
//!   before anything is sent there, repeated after a connection to it fails;
//! - a throttle releasing requests only up to each instance's free capacity
//!   (containerConcurrency, unlimited when 0) with Knative's policies: CC 0 power of two
//!   choices by requests in flight, CC 1–3 first available in address order, CC ≥ 4 round
//!   robin with a capacity check.
//!
//! The revision's `timeout` covers waiting and forwarding: a wait for capacity that outlives it
//! is a 503 `activator request timeout: context deadline exceeded` (as Knative's activator
//! answers its throttler's deadline); expiry once forwarded, before the response starts, is a
//! 504 `activator request timeout`; after, the body is cut off. A request whose backend
//! refuses the connection (nothing was sent) is re-queued in its place and goes elsewhere.
//! Forwarded requests carry `K-Proxy-Request: activator` and `K-Original-Host`, the Host kept.
//! To an instance in another process, a request without a body (an HTTP/2 GET, say) goes over
//! kept-alive raw connections, the ones the front's fast path uses: one pool per backend,
//! dropped with it.
//! An h2c revision ([`RevisionParams::h2c`]) is forwarded to over HTTP/2 cleartext (pooled,
//! multiplexed), keeping trailers and streaming both ways at once (gRPC); its probes and
//! capacity accounting are the same as any revision's.
//!
//! A protocol switch (WebSocket) waits and is released like any request, the wait counted in
//! the timeout; once the instance switched (101), the connection is carried both ways in its
//! own task, free of the revision's timeouts, and until it closes it counts as a request in
//! the activator's statistics and holds its slot on the instance.
//!
//! Responses to requests that waited for an activation carry `K-Cold-Start: <ms>`, the time
//! the request waited in the activator. `K-Network-Probe: activator` is answered 200
//! `activator`. [`Activator::metrics_text`] gives the Prometheus metrics and
//! [`Activator::take_stats`] the per-revision load for the autoscaler.

#![warn(missing_docs)]

mod activator;
mod config;
mod forward;
mod front;
mod lb;
mod metrics;
mod probe;
mod revision;

pub use activator::{ACTIVATOR_PROBE, Activator};
pub use config::{ActivatorConfig, ActivatorStat, DEFAULT_REVISION_TIMEOUT, Poke, RevisionParams};
pub use forward::{BodyDeadline, ForwardError, forward_upgrade_retryable, spawn_tunnel};
pub use front::{ActivatorFront, NAMESPACE_HEADER, REVISION_HEADER};
pub use probe::PROBE_USER_AGENT;
pub use revision::{
    COLD_START_HEADER, Expiry, FastAdmit, PROXY_REQUEST_HEADER, Permit, Ticket, WAIT_EXPIRED_TEXT,
};

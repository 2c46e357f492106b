//! The activator as a process of its own: its listener's fast path. A plain HTTP/1.1 request
//! naming its revision (`Knative-Serving-Namespace` / `-Revision`, as the gateway sends them)
//! is admitted as [`Activator::handle`] would admit it; while it waits for an instance its
//! connection holds only the request's bytes, and once released it goes to the instance's
//! queue-proxy over a kept-alive raw connection. Anything else (a probe, a protocol switch, an
//! h2c revision, a streamed body) goes the general way.

use std::sync::Arc;

use bytes::Bytes;
use rouse_http::h1::FastRequest;
use rouse_http::{FastDest, FastRoute, FrontRouter, RemoteHop, Route};
use rouse_queue::LocalQueue;
use tokio::time::Instant;

use crate::{Activator, COLD_START_HEADER, Expiry, FastAdmit, Permit, Ticket};

/// The header naming the revision's namespace on requests sent to an activator.
pub const NAMESPACE_HEADER: &str = "knative-serving-namespace";
/// The header naming the revision on requests sent to an activator.
pub const REVISION_HEADER: &str = "knative-serving-revision";

/// The request line the activator adds for the instance's queue-proxy.
const PROXY_MARK: &[u8] = b"k-proxy-request: activator\r\n";

/// The activator's [`FrontRouter`]: serve its listener with
/// [`rouse_http::serve_front`].
pub struct ActivatorFront {
    activator: Arc<Activator>,
}

impl ActivatorFront {
    /// The fast path into `activator`.
    pub fn new(activator: Arc<Activator>) -> Self {
        ActivatorFront { activator }
    }

    /// A released request's way to its instance: in-process when it is one of this
    /// process's queue-proxies, else over the network (the connections the instance's
    /// backend keeps), marked as the activator's.
    fn go(hop: Arc<RemoteHop>, permit: Permit) -> Route<Permit, Ticket, LocalQueue> {
        let (dest, extra_request_headers) = match LocalQueue::lookup(hop.addr()) {
            Some(queue) => (FastDest::Local(queue), Bytes::new()),
            None => (FastDest::Remote(hop), Bytes::from_static(PROXY_MARK)),
        };
        let extra_response_headers = permit
            .cold_start_ms()
            .map(|ms| format!("{COLD_START_HEADER}: {ms}\r\n").into_bytes())
            .unwrap_or_default();
        Route::Go(FastRoute {
            dest,
            hold: permit,
            proxied: true,
            extra_request_headers,
            extra_response_headers,
        })
    }
}

/// A header value naming a revision or namespace, when it is one (non-empty UTF-8).
fn text(value: Option<&[u8]>) -> Option<&str> {
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|v| !v.is_empty())
}

impl FrontRouter for ActivatorFront {
    type Local = LocalQueue;
    type Hold = Permit;
    type Wait = Ticket;
    type Expiry = Expiry;

    fn route(&self, req: &FastRequest<'_>) -> Route<Permit, Ticket, LocalQueue> {
        // Both names found in one look at the headers (the first of each counts).
        let (mut ns, mut rev) = (None, None);
        for h in req.headers {
            if ns.is_none() && h.name.eq_ignore_ascii_case(NAMESPACE_HEADER) {
                ns = Some(h.value);
            } else if rev.is_none() && h.name.eq_ignore_ascii_case(REVISION_HEADER) {
                rev = Some(h.value);
            }
        }
        let (Some(ns), Some(rev)) = (text(ns), text(rev)) else {
            return Route::General;
        };
        match self.activator.fast_admit(ns, rev) {
            None => Route::General,
            Some(FastAdmit::Now(hop, permit)) => Self::go(hop, permit),
            Some(FastAdmit::Wait(ticket)) => Route::Wait(ticket),
            Some(FastAdmit::Refused(status, text)) => Route::Answer(status, text),
        }
    }

    fn wait(
        &self,
        ticket: Ticket,
    ) -> impl Future<Output = Route<Permit, Ticket, LocalQueue>> + Send {
        let ticket = ticket.wait();
        async move {
            match ticket.await {
                Ok((hop, permit)) => Self::go(hop, permit),
                Err((status, text)) => Route::Answer(status, text),
            }
        }
    }

    fn deadline(&self, ticket: &Ticket) -> Option<(Instant, Expiry)> {
        Some(ticket.deadline())
    }

    fn expired(&self, expiry: Expiry) -> Route<Permit, Ticket, LocalQueue> {
        let (status, text) = expiry.fire();
        Route::Answer(status, text)
    }

    fn answered(&self, permit: &Permit, status: u16) {
        permit.answered(status);
    }

    fn is_edge(&self) -> bool {
        // Behind the gateway: what it said about the client goes on unchanged.
        false
    }
}

//! The queue-proxy's fast path: a plain HTTP/1.1 request, already parsed and rewritten by the
//! front door ([`rouse_http::front`]), is admitted exactly as [`LocalQueue::handle`] would
//! (load report, requests in flight, concurrency limit and queue, timeouts), then exchanged
//! with the app by the engine ([`rouse_http::fast::forward`]).

use http::StatusCode;
use rouse_http::fast::{
    FastConn, FastExchange, FastOutcome, LocalHop, answer, client_gone, forward,
};
use rouse_http::timeout::TIMEOUT_BODY;
use tokio::net::TcpStream;

use crate::queue::{LocalQueue, QUEUE_FULL_BODY};

impl LocalHop for LocalQueue {
    /// Serves one fast-path request on the client connection `client`: admits it like
    /// [`LocalQueue::handle`], sends it to the app and streams the answer back. Also returns
    /// the status the client got, if it got one.
    async fn serve_fast(
        &self,
        client: &mut TcpStream,
        ex: FastExchange<'_>,
        kept: &mut FastConn,
    ) -> (FastOutcome, Option<u16>) {
        let shared = &self.0;
        let cfg = &shared.cfg;
        // A logged request takes the general path, which keeps what its line needs.
        if cfg.request_log.as_ref().is_some_and(|l| l.is_on()) {
            return (FastOutcome::Refused, None);
        }
        let deadlines = cfg.deadlines();
        // Held until the response is over: the load report, drain, the concurrency slot.
        let _stats = shared.stats.start(ex.proxied);
        let _in_flight = shared.in_flight.start();
        let _slot = match &shared.breaker {
            None => None,
            Some(breaker) => {
                let Ok(place) = breaker.reserve() else {
                    let status = StatusCode::SERVICE_UNAVAILABLE;
                    return (
                        answer(client, status, QUEUE_FULL_BODY, &ex).await,
                        Some(503),
                    );
                };
                let acquired = tokio::select! {
                    biased;
                    slot = kept.timer().run(deadlines.head(), place.acquire()) => slot,
                    () = client_gone(client) => return (FastOutcome::Close, None),
                };
                match acquired {
                    Some(slot) => Some(slot),
                    None => {
                        let status = StatusCode::GATEWAY_TIMEOUT;
                        return (answer(client, status, TIMEOUT_BODY, &ex).await, Some(504));
                    }
                }
            }
        };
        let who = Some((cfg.namespace.as_str(), cfg.revision.as_str()));
        forward(&shared.fast_pool, client, &ex, &deadlines, kept, who).await
    }
}

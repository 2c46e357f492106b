//! The activator's own readiness check of an instance's queue-proxy.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{HeaderValue, USER_AGENT};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use rouse_http::PROBE_HEADER;
use rouse_http::{ProxyClient, empty};
use rouse_queue::{LocalQueue, PROBE_OK_BODY};

/// The User-Agent of the activator's probes (the queue-proxy knows it as a probe).
pub const PROBE_USER_AGENT: &str = "Knative-Activator-Probe";

/// Whether the queue-proxy at `addr` says its app is ready: `GET /` with
/// `K-Network-Probe: queue` answered 200 with body `queue` within `timeout`.
///
/// A queue-proxy of this process ([`LocalQueue`]) gets the same request handed over directly.
pub(crate) async fn probe_queue(client: &ProxyClient, addr: SocketAddr, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, async {
        let mut req = Request::new(empty());
        req.headers_mut()
            .insert(PROBE_HEADER, HeaderValue::from_static(PROBE_OK_BODY));
        req.headers_mut()
            .insert(USER_AGENT, HeaderValue::from_static(PROBE_USER_AGENT));
        if let Some(queue) = LocalQueue::lookup(addr) {
            // Its own health answer: small and complete.
            let resp = queue.handle(req).await;
            return resp.status() == StatusCode::OK
                && match resp.into_body().collect().await {
                    Ok(body) => body.to_bytes() == PROBE_OK_BODY.as_bytes(),
                    Err(_) => false,
                };
        }
        let Ok(resp) = client.forward(req, addr).await else {
            return false;
        };
        if resp.status() != StatusCode::OK {
            return false;
        }
        match Limited::new(resp.into_body(), 64).collect().await {
            Ok(body) => body.to_bytes() == PROBE_OK_BODY.as_bytes(),
            Err(_) => false,
        }
    })
    .await
    .unwrap_or(false)
}

//! A pooled keep-alive client that forwards requests to an upstream address.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::{Body, BoxError, text_response};
use super::headers::strip_hop_by_hop;
use super::upgrade::{Tunnel, is_upgrade, upgrade_protocol};

/// How long an idle upstream connection stays in the pool.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why forwarding failed. Each is the upstream's fault, and none is safe to retry blindly
/// (the request may have reached the app), except [`ProxyError::Connect`].
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No connection to the upstream could be made; the request never left.
    #[error("cannot connect to upstream {addr}: {source}")]
    Connect {
        /// The upstream.
        addr: SocketAddr,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
    /// The connection failed while the request or the response head was on the wire.
    #[error("upstream {addr} failed: {source}")]
    Upstream {
        /// The upstream.
        addr: SocketAddr,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
    /// The request could not be addressed to the upstream (a malformed target).
    #[error("cannot address the request to {addr}: {reason}")]
    BadRequest {
        /// The upstream.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

impl ProxyError {
    /// Whether the request certainly never reached the upstream (so a retry is safe).
    pub fn is_connect(&self) -> bool {
        matches!(self, ProxyError::Connect { .. })
    }

    /// The status a proxy answers with: 502 Bad Gateway for upstream failures, 400 for a
    /// request that cannot be forwarded.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// The response a proxy gives the client for this error.
    pub fn to_response(&self) -> Response<Body> {
        text_response(self.status(), self.to_string())
    }
}

/// A pooled client for forwarding to upstreams over loopback or the network. Keeps connections
/// alive between requests and streams bodies both ways. Cheap to clone (clones share the pool).
#[derive(Clone, Debug)]
pub struct ProxyClient {
    client: Client<HttpConnector, Body>,
    h2c: bool,
}

impl ProxyClient {
    /// A client speaking HTTP/1.1 to upstreams.
    pub fn http1() -> Self {
        Self::build(false, usize::MAX)
    }

    /// A client speaking HTTP/2 cleartext (prior knowledge) to upstreams.
    pub fn h2c() -> Self {
        Self::build(true, usize::MAX)
    }

    /// A client that opens a fresh connection for every request (for probes, which must see
    /// whether the upstream accepts connections now).
    pub fn unpooled(h2c: bool) -> Self {
        Self::build(h2c, 0)
    }

    fn build(h2c: bool, max_idle: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(max_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(h2c);
        ProxyClient {
            client: builder.build(connector),
            h2c,
        }
    }

    /// Whether this client speaks h2c.
    pub fn is_h2c(&self) -> bool {
        self.h2c
    }

    /// Sends `req` to `upstream`, keeping its path, query, method, headers and (streamed) body.
    /// The original Host is kept (taken from the URI authority when the request came over
    /// HTTP/2 without one). Hop-by-hop headers are removed from the request and the response.
    /// Internal headers are the caller's business.
    pub async fn forward(
        &self,
        req: Request<Body>,
        upstream: SocketAddr,
    ) -> Result<Response<Incoming>, ProxyError> {
        self.send(req, upstream, None).await
    }

    /// Forwards a request that asks to switch protocols (see [`is_upgrade`]; a WebSocket
    /// handshake, say), keeping its `Upgrade` and `Connection: upgrade`. When the upstream
    /// agrees (101), the response keeps them too and comes with the [`Tunnel`] the caller runs
    /// to carry the bytes between the client and the upstream once both sides switched; any
    /// other answer comes alone. `req` must be the request as the server received it (its
    /// extensions carry the client side of the upgrade). An h2c client cannot carry an
    /// HTTP/1.1 upgrade: it forwards the request as a plain one.
    pub async fn forward_upgrade(
        &self,
        mut req: Request<Body>,
        upstream: SocketAddr,
    ) -> Result<(Response<Incoming>, Option<Tunnel>), ProxyError> {
        let protocol = upgrade_protocol(&req).filter(|_| !self.h2c && is_upgrade(&req));
        let Some(protocol) = protocol else {
            return Ok((self.send(req, upstream, None).await?, None));
        };
        let client_side = hyper::upgrade::on(&mut req);
        let mut resp = self.send(req, upstream, Some(protocol)).await?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Ok((resp, None));
        }
        let upstream_side = hyper::upgrade::on(&mut resp);
        Ok((resp, Some(Tunnel::new(client_side, upstream_side))))
    }

    /// Sends `req`; with `upgrade`, the request (and a 101 answer) keep the upgrade headers.
    async fn send(
        &self,
        mut req: Request<Body>,
        upstream: SocketAddr,
        upgrade: Option<HeaderValue>,
    ) -> Result<Response<Incoming>, ProxyError> {
        if !req.headers().contains_key(header::HOST)
            && let Some(authority) = req.uri().authority()
            && let Ok(v) = HeaderValue::from_str(authority.as_str())
        {
            req.headers_mut().insert(header::HOST, v);
        }
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let uri: Uri =
            format!("http://{upstream}{path}")
                .parse()
                .map_err(|e: http::uri::InvalidUri| ProxyError::BadRequest {
                    addr: upstream,
                    reason: e.to_string(),
                })?;
        *req.uri_mut() = uri;
        *req.version_mut() = if self.h2c {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        strip_hop_by_hop(req.headers_mut());
        if let Some(protocol) = &upgrade {
            keep_upgrade(req.headers_mut(), protocol.clone());
        }
        match self.client.request(req).await {
            Ok(mut resp) => {
                let switched =
                    upgrade.is_some() && resp.status() == StatusCode::SWITCHING_PROTOCOLS;
                let protocol = resp.headers().get(header::UPGRADE).cloned();
                strip_hop_by_hop(resp.headers_mut());
                if switched && let Some(protocol) = protocol {
                    keep_upgrade(resp.headers_mut(), protocol);
                }
                Ok(resp)
            }
            Err(e) if e.is_connect() => Err(ProxyError::Connect {
                addr: upstream,
                source: e.into(),
            }),
            Err(e) => Err(ProxyError::Upstream {
                addr: upstream,
                source: e.into(),
            }),
        }
    }
}

/// Puts back the headers that carry a protocol switch across a hop.
fn keep_upgrade(headers: &mut http::HeaderMap, protocol: HeaderValue) {
    headers.insert(header::UPGRADE, protocol);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

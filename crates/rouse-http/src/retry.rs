//! Forwarding that gives the request back, body unread, when the upstream could not be
//! reached, so a proxy can safely send it elsewhere or again (nothing of it left this hop);
//! to a hop in another process, bodiless requests go the raw way ([`forward_to_hop`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;

use super::raw::{self, RawError};
use super::{Body, BoxError, ProxyClient, ProxyError, RemoteHop, boxed};

/// Why [`forward_retryable`] did not get a response.
#[derive(Debug)]
pub enum ForwardError {
    /// No connection could be made and nothing of the request was sent: here it is back,
    /// to send elsewhere.
    Retry(Box<Request<Body>>, ProxyError),
    /// The connection broke before any response and the body was never read, but the request
    /// head may have reached the upstream: only an idempotent request may be sent again.
    Unanswered(Box<Request<Body>>, ProxyError),
    /// Forwarding failed after the request may have left (or it could not be addressed).
    Failed(ProxyError),
}

impl ForwardError {
    /// The error, whatever happened to the request.
    pub fn into_error(self) -> ProxyError {
        match self {
            ForwardError::Retry(_, e)
            | ForwardError::Unanswered(_, e)
            | ForwardError::Failed(e) => e,
        }
    }
}

/// Forwards `req` to `upstream` like [`ProxyClient::forward`], but when the connection cannot
/// be made (the instance is gone) hands the untouched request back, body unread, so the
/// caller can safely send it elsewhere.
pub async fn forward_retryable(
    client: &ProxyClient,
    req: Request<Body>,
    upstream: SocketAddr,
) -> Result<Response<Incoming>, ForwardError> {
    let (parts, body) = req.into_parts();
    let mut copy = Request::new(());
    *copy.method_mut() = parts.method.clone();
    *copy.uri_mut() = parts.uri.clone();
    *copy.version_mut() = parts.version;
    *copy.headers_mut() = parts.headers.clone();
    *copy.extensions_mut() = parts.extensions.clone();
    let shared = Arc::new(Held {
        body: Mutex::new(Some(body)),
        touched: AtomicBool::new(false),
    });
    let sent = Request::from_parts(parts, boxed(Lent(shared.clone())));
    match client.forward(sent, upstream).await {
        Ok(resp) => Ok(resp),
        Err(e) if !shared.touched.load(Ordering::SeqCst) => {
            match shared.body.lock().expect("body lock").take() {
                Some(body) if e.is_connect() => {
                    Err(ForwardError::Retry(Box::new(copy.map(|()| body)), e))
                }
                Some(body) => Err(ForwardError::Unanswered(Box::new(copy.map(|()| body)), e)),
                None => Err(ForwardError::Failed(e)),
            }
        }
        Err(e) => Err(ForwardError::Failed(e)),
    }
}

/// Forwards `req` to `hop` as [`forward_retryable`] does with `client`, except that a request
/// that may go the raw way ([`raw::eligible`]: no body, no protocol switch) to an HTTP/1.1
/// hop goes over the hop's kept-alive raw connections ([`raw::send`]), the ones its fast path
/// uses, without the pooled client's task, channel and checkout. Failures are told the same
/// way: no connection made is [`ForwardError::Retry`], the request handed back to send
/// elsewhere; a connection that broke before any answer is [`ForwardError::Unanswered`].
pub async fn forward_to_hop(
    client: &ProxyClient,
    hop: &RemoteHop,
    req: Request<Body>,
) -> Result<Response<Body>, ForwardError> {
    let addr = hop.addr();
    if client.is_h2c() || !raw::eligible(&req) {
        return forward_retryable(client, req, addr)
            .await
            .map(|resp| resp.map(boxed));
    }
    let (mut parts, body) = req.into_parts();
    let failed = match raw::send(hop.pool(), &mut parts, addr).await {
        Ok(resp) => return Ok(resp),
        Err(e) => e,
    };
    let back = || Box::new(Request::from_parts(parts, body));
    Err(match failed {
        RawError::Refused(e) => ForwardError::Retry(
            back(),
            ProxyError::Connect {
                addr,
                source: e.into(),
            },
        ),
        e @ RawError::Unanswered(_) => ForwardError::Unanswered(
            back(),
            ProxyError::Upstream {
                addr,
                source: e.into(),
            },
        ),
        e @ RawError::Bad(_) => ForwardError::Failed(ProxyError::Upstream {
            addr,
            source: e.into(),
        }),
    })
}

/// A request body shared with [`forward_retryable`], which takes it back if it was never read.
struct Held {
    body: Mutex<Option<Body>>,
    touched: AtomicBool,
}

/// The half of [`Held`] given to the client.
struct Lent(Arc<Held>);

impl HttpBody for Lent {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.touched.store(true, Ordering::SeqCst);
        let mut body = self.0.body.lock().expect("body lock");
        match body.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0
            .body
            .lock()
            .expect("body lock")
            .as_ref()
            .is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .body
            .lock()
            .expect("body lock")
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

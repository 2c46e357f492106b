//! A response body that is cut off at a deadline, and forwarding of protocol upgrades that
//! gives the request back when the upstream could not be reached (plain forwarding that does
//! so lives in `rouse_http`: `forward_retryable`, `forward_to_hop`).

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use rouse_http::{Body, BoxError, ProxyClient, Tunnel, empty};
use tokio::time::{Instant, Sleep};

pub use rouse_http::ForwardError;

/// Forwards a request that asks to switch protocols (a WebSocket handshake; see
/// [`rouse_http::is_upgrade`]) with [`ProxyClient::forward_upgrade`]: on 101 the
/// response comes with the [`Tunnel`] to run (see [`spawn_tunnel`]); any other answer comes
/// alone. When no connection could be made and the request has no body (a handshake never
/// has one), it is handed back as [`ForwardError::Retry`], its client side of the upgrade
/// kept, to send elsewhere; every other failure is [`ForwardError::Failed`].
pub async fn forward_upgrade_retryable(
    client: &ProxyClient,
    req: Request<Body>,
    upstream: SocketAddr,
) -> Result<(Response<Incoming>, Option<Tunnel>), ForwardError> {
    let bodyless = req.body().is_end_stream();
    // The head, with a handle on the client's upgrade (handles share it), for a retry.
    let mut copy = Request::new(());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    match client.forward_upgrade(req, upstream).await {
        Ok(answer) => Ok(answer),
        Err(e) if e.is_connect() && bodyless => {
            Err(ForwardError::Retry(Box::new(copy.map(|()| empty())), e))
        }
        Err(e) => Err(ForwardError::Failed(e)),
    }
}

/// Runs a switched connection's [`Tunnel`] in its own task (it must run apart from the
/// handler returning the 101), holding `hold` (in-flight counts, a concurrency slot) until
/// either side closes the connection.
pub fn spawn_tunnel<G: Send + 'static>(tunnel: Tunnel, hold: G) {
    tokio::spawn(async move {
        match tunnel.run().await {
            Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
            Err(e) => tracing::debug!(error = %e, "upgraded connection ended with an error"),
        }
        drop(hold);
    });
}

/// The error a body cut off at its deadline ends with.
#[derive(Debug, thiserror::Error)]
#[error("response cut off: the request timeout expired while the body was streaming")]
pub struct BodyDeadline;

pin_project_lite::pin_project! {
    /// A response body that ends with [`BodyDeadline`] when `deadline` passes before it
    /// finished, so the client sees the response cut off rather than rewritten. `on_cut` runs
    /// when that happens.
    pub(crate) struct DeadlineBody<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: Sleep,
        on_cut: Option<Box<dyn FnOnce() + Send>>,
        done: bool,
    }
}

impl<B> DeadlineBody<B> {
    pub(crate) fn new(inner: B, deadline: Instant, on_cut: Box<dyn FnOnce() + Send>) -> Self {
        DeadlineBody {
            inner,
            sleep: tokio::time::sleep_until(deadline),
            on_cut: Some(on_cut),
            done: false,
        }
    }
}

impl<B> HttpBody for DeadlineBody<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(None) => {
                *this.done = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(frame)) => return Poll::Ready(Some(frame.map_err(Into::into))),
            Poll::Pending => {}
        }
        if this.sleep.poll(cx).is_ready() {
            *this.done = true;
            if let Some(f) = this.on_cut.take() {
                f();
            }
            return Poll::Ready(Some(Err(Box::new(BodyDeadline))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

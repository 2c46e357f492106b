//! A response body that is cut off at a deadline (forwarding that can give the request back
//! lives in `rouse_queue::http::retry`, shared with the queue-proxy).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use rouse_queue::http::BoxError;
use tokio::time::{Instant, Sleep};

pub use rouse_queue::http::{ForwardError, forward_retryable};

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
